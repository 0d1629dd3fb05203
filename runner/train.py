"""Training from scratch (weights=None, 10 classes) and distillation, on GPU-resident data.

    python -m runner train --model resnet18 --config variants/default.yaml     # one model, no sweep
    (inside a sweep, `runner/sweep.py` calls `train()` in a Ray task pinned to one GPU)

Recipe: SGD with Nesterov momentum, a one-cycle (linear up, linear down) LR per step, label smoothing,
weight decay on weights only (not on BN / biases), bf16 autocast and channels_last on the GPU; the whole
split as one tensor on the device, flip, pad-crop and optional cutout done batch-wide there (no DataLoader,
no workers: airbench's way); `deterministic` fixes cuDNN's algorithms, so a seed gives the same weights in
every run (measured on an H200: reports/h200-training/).
Distillation (the brief's I4): loss = alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE,
the teacher's logits computed on the same augmented batch in inference mode.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from models import get_model
from models.fastnet import has_whitening_stem, init_whitening
from runner.data import Cifar, normalizer
from runner.evaluate import accuracy
from variants import TrainSpec

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def build_model(arch: str, arch_args: dict[str, Any] | None = None) -> torch.nn.Module:
    return get_model(arch, num_classes=10, **(arch_args or {}))


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device) -> torch.nn.Module:
    model = build_model(ckpt["arch"], ckpt["arch_args"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
                 alpha: float, temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al.'s loss. T^2 keeps the soft term's gradient scale independent of the temperature."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)
    return alpha * t * t * soft + (1 - alpha) * hard


def one_cycle(total_steps: int, warmup_frac: float) -> Callable[[int], float]:
    """LR multiplier per step: linear from 0.1 up to 1 over the warm-up, then linear down to 0."""
    warm = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warm:
            return 0.1 + 0.9 * step / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))
    return factor


def make_optimizer(model: torch.nn.Module, recipe) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def augment(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random horizontal flip and pad-and-crop (reflect pad), batch-wide on x's device.

    One gather with per-image offsets instead of a loop over images: the whole batch costs a few kernels.
    """
    n, _, h, w = x.shape
    dev = x.device
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=dev, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]          # (n,1,h,1)
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]          # (n,1,1,w)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return padded[idx_n, idx_c, rows, cols]


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one size x size square per image (DeVries & Taylor 2017), batch-wide on x's device.

    Applied after normalisation, so the square holds the dataset mean. The centre is anywhere in the image,
    so squares near a border are clipped, as in the paper. One broadcast mask, no loop over images.
    """
    n, _, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (n, 1, 1, 1), device=dev, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1, 1), device=dev, generator=generator)
    rows = torch.arange(h, device=dev).view(1, 1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, 1, w)
    lo = size // 2
    inside = ((rows - cy + lo) >= 0) & ((rows - cy + lo) < size) & ((cols - cx + lo) >= 0) & ((cols - cx + lo) < size)
    return x.masked_fill(inside, 0.0)


class DeviceBatches:
    """The whole split as one tensor on the device; an epoch is a device randperm sliced into batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray, device: torch.device, batch_size: int, *,
                 train: bool, seed: int = 0, channels_last: bool = False, cutout_size: int = 0):
        # Arrays from Ray's object store are read-only views: copy once (to the device, or on the CPU).
        self.x = torch.from_numpy(np.array(x)).to(device)
        self.y = torch.from_numpy(np.array(y)).to(device)
        self.batch_size, self.train, self.channels_last = batch_size, train, channels_last
        self.cutout_size = cutout_size if train else 0
        self.norm = normalizer(device)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.y)
        order = (torch.randperm(n, device=self.x.device, generator=self.gen) if self.train
                 else torch.arange(n, device=self.x.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[idx]
            if self.train:  # drop_last in training keeps every step the same shape (compile-friendly)
                xb = augment(xb, generator=self.gen)
            xb = self.norm(xb)
            if self.cutout_size:
                xb = cutout(xb, self.cutout_size, generator=self.gen)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, self.y[idx]


def train_one_epoch(model, batches, opt, sched, *, amp_dtype, label_smoothing, teacher=None, recipe=None):
    model.train()
    loss_sum = torch.zeros((), device=batches.x.device)
    correct = torch.zeros((), device=batches.x.device, dtype=torch.long)
    seen = 0
    for xb, yb in batches:
        with torch.autocast(xb.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(xb)
            if teacher is not None:
                with torch.inference_mode():
                    t_logits = teacher(xb)
                loss = distill_loss(logits, t_logits.clone(), yb, alpha=recipe.distill_alpha,
                                    temperature=recipe.distill_temperature, label_smoothing=label_smoothing)
            else:
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        # Accumulate on the device: a .item() per step would synchronise and stall the GPU queue.
        loss_sum += loss.detach() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
    return loss_sum.item() / max(seen, 1), 100.0 * correct.item() / max(seen, 1), seen


@contextlib.contextmanager
def cudnn_mode(*, deterministic: bool):
    """cuDNN's algorithm choice for one training run, restored afterwards (a Ray worker process is reused).

    benchmark=True times the candidate kernels of every new shape and keeps the fastest: fastest, but the
    choice (and so the floating-point summation order of the backward pass) can differ between processes,
    so the same seed does not give the same weights. deterministic=True pins reproducible algorithms.
    """
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = (not deterministic), deterministic
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def train(spec: TrainSpec, data: Cifar, device: torch.device, *, teacher_ckpt: dict | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `spec` from scratch; return a checkpoint dict (loadable with torch.load(weights_only=True))."""
    with cudnn_mode(deterministic=spec.recipe.deterministic):
        return _train(spec, data, device, teacher_ckpt=teacher_ckpt, log=log)


def _train(spec: TrainSpec, data: Cifar, device: torch.device, *, teacher_ckpt: dict | None,
           log: Callable[[str], None]) -> dict[str, Any]:
    recipe = spec.recipe
    torch.manual_seed(spec.seed)
    data = data.subset(recipe.train_subset, recipe.test_subset)
    if recipe.batch_size > len(data.train_y):  # checked before a model is built: such a task fails at once
        raise ValueError(f"batch_size {recipe.batch_size} is larger than the {len(data.train_y)} training images")
    on_gpu = device.type == "cuda"
    # Mixed precision and channels_last are GPU speed-ups; on CPU they only slow a test run down.
    amp_dtype = AMP_DTYPES[recipe.amp] if on_gpu else None
    channels_last = recipe.channels_last and on_gpu

    model = build_model(spec.arch, dict(spec.arch_args)).to(device)
    if has_whitening_stem(model):  # a whitening stem is set from the training patches, then frozen
        first = torch.from_numpy(np.array(data.train_x[:5000])).to(device)
        init_whitening(model, normalizer(device)(first))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = model_from_checkpoint(teacher_ckpt, device) if teacher_ckpt is not None else None
    if teacher is not None and channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if (recipe.compile and on_gpu) else model

    train_b = DeviceBatches(data.train_x, data.train_y, device, recipe.batch_size, train=True, seed=spec.seed,
                            channels_last=channels_last, cutout_size=recipe.cutout)
    test_b = DeviceBatches(data.test_x, data.test_y, device, 1000, train=False, channels_last=channels_last)
    opt = make_optimizer(model, recipe)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, one_cycle(recipe.epochs * len(train_b), recipe.warmup_frac))

    # The epoch loop: train, time (synchronized on a GPU), test.
    epochs_log: list[dict[str, Any]] = []
    train_s, images = 0.0, 0
    for epoch in range(1, recipe.epochs + 1):
        if on_gpu:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss, acc, seen = train_one_epoch(step_model, train_b, opt, sched, amp_dtype=amp_dtype,
                                          label_smoothing=recipe.label_smoothing, teacher=teacher, recipe=recipe)
        if on_gpu:
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        train_s += dt
        images += seen
        model.eval()
        top1 = accuracy(model, test_b, amp_dtype=amp_dtype)
        epochs_log.append({"epoch": epoch, "train_loss": loss, "train_acc_pct": acc, "top1_pct": top1,
                           "epoch_s": dt, "train_img_per_s": seen / dt})
        log(f"[train {spec.key}] epoch {epoch}/{recipe.epochs} loss {loss:.3f} train {acc:.1f}% "
            f"test {top1:.2f}% {dt:.1f}s {seen / dt:,.0f} img/s")

    model.eval()
    # The number the sweep reports for the trained model: full fp32 (TF32 off), no autocast, contiguous.
    # On a CPU the last epoch's pass was exactly that (no autocast or channels_last there, above): the same
    # weights on the same test images, so it is not run twice (ResNet-18 evaluates ~20 images/s on one core).
    top1_fp32 = epochs_log[-1]["top1_pct"] if not on_gpu else accuracy(
        model.float().to(memory_format=torch.contiguous_format),
        DeviceBatches(data.test_x, data.test_y, device, 1000, train=False), amp_dtype=None)
    return {
        "key": spec.key, "arch": spec.arch, "arch_args": dict(spec.arch_args), "teacher": spec.teacher,
        "seed": spec.seed, "spec_hash": spec.spec_hash,
        "recipe_json": json.dumps(dataclasses.asdict(recipe), sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "log": epochs_log, "top1_pct": top1_fp32, "train_s": train_s,
        "train_img_per_s": images / train_s if train_s else 0.0, "epochs": recipe.epochs,
        "data_source": data.source,
    }
