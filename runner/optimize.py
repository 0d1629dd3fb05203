"""Turn a trained model + a Variant into a ready-to-run callable, in one place.

Every axis is resolved here and nowhere else: precision -> dtypes, memory format on the model and its
input together, BN folding, torch.compile mode (after `torch._dynamo.reset()`), whole-model CUDA graph.
Used by `runner/sweep.py`'s bench task: `prepare()` once, then `.callable_for(batch_size)` for the benchmark
(batch 1) and for the accuracy pass (large batches), so both go through the same prepared model.
A combination that cannot run on the device raises `Unsupported` (a `skipped` row, with the reason).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from runner.unsupported import Unsupported
from variants import Variant

# precision -> (dtype of weights and input, autocast dtype or None)
PRECISION_DTYPES: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "fp32": (torch.float32, None),
    "fp16": (torch.float16, None),
    "bf16": (torch.bfloat16, None),
    "amp_fp16": (torch.float32, torch.float16),   # fp32 weights, fp16 autocast (the brief's "FP16 autocast")
}
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # these capture CUDA graphs themselves


def unsupported_reason(variant: Variant, device: torch.device) -> str | None:
    if variant.compile == "fused" and (not variant.bn_fold or variant.precision != "fp16" or device.type != "cuda"):
        return (f"compile: fused (runner/fused.py's Triton kernels) needs bn_fold: on, precision: fp16 and a CUDA "
                f"device; got bn_fold {variant.bn_fold}, {variant.precision}, {device.type}")
    if variant.cuda_graph and variant.compile in GRAPHING_COMPILE_MODES:
        return f"compile mode {variant.compile} already captures CUDA graphs; a second graph adds nothing"
    if device.type != "cuda":
        if variant.cuda_graph:
            return "CUDA graphs need a CUDA device"
        if variant.precision in ("fp16", "amp_fp16"):
            return "fp16 inference is a GPU path; CPU half-precision convolutions are not a latency option"
        if variant.compile in GRAPHING_COMPILE_MODES or variant.compile == "max-autotune-no-cudagraphs":
            return f"compile mode {variant.compile} tunes GPU kernels / graphs; on CPU it is plain inductor"
    return None


def strict_fp32() -> None:
    """fp32 means fp32: no TF32 in matmuls or convolutions (process-wide; each bench is its own process)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """Fold every BatchNorm that directly follows a conv / linear into its weights (inference only).

    Uses torch.fx tracing, so it finds conv->bn pairs wherever they are in forward(), not only inside
    nn.Sequential. Returns the folded module and how many BN layers it removed.
    """
    from torch.fx.experimental.optimization import fuse

    before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    folded = fuse(model.eval(), inplace=False)
    after = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    return folded, before - after


@torch.inference_mode()
def fold_error(model: nn.Module, x: torch.Tensor) -> float:
    """BN folding checked on a real batch: max |folded - unfolded logits| / max |unfolded logit|, in fp32.

    Folding is exact algebra, so in fp32 the error is rounding (~1e-6); anything near 1e-3 means a BN
    was folded into the wrong layer (a pool or activation in between) and the variant must not count.
    """
    ref_model = copy.deepcopy(model).float().eval()
    folded, _ = fold_batchnorm(ref_model)
    ref = ref_model(x.float()).float()
    got = folded(x.float()).float()
    scale = float(ref.abs().max())
    return float((got - ref).abs().max()) / (scale if scale > 0 else 1.0)


class FlipTTA(nn.Module):
    """Test-time augmentation: logits of the image and its horizontal mirror, averaged, in one forward of
    batch 2N, so a compiled graph / CUDA graph holds both (a second launch would cost a whole floor)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = self.model(torch.cat([x, x.flip(3)]))
        return (y[:n] + y[n:]) * 0.5


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """`model` with the variant's test-time augmentation applied (none: the model itself)."""
    if tta == "none":
        return model
    if tta == "flip":
        return FlipTTA(model)
    raise Unsupported(f"unknown tta {tta!r}")


def state_size_mb(model: nn.Module) -> tuple[float, int]:
    """Bytes of parameters + buffers as stored (i.e. in the variant's precision), in MB (10^6), and #params."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6, sum(p.numel() for p in model.parameters())


@dataclass
class Prepared:
    """A model with every axis of one variant applied; `callable_for(batch)` gives a callable for that batch size."""
    variant: Variant
    device: torch.device
    forward: Callable[[torch.Tensor], torch.Tensor]
    input_dtype: torch.dtype
    size_mb: float
    params: int
    folded_layers: int = 0
    notes: list[str] = field(default_factory=list)

    def cast_input(self, x: torch.Tensor) -> torch.Tensor:
        """Same dtype and memory format as the model: applied outside the timed region."""
        x = x.to(self.device, self.input_dtype)
        if self.variant.memory_format == "channels_last":
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def callable_for(self, batch_size: int, warm_calls: int = 3) -> tuple[Callable, torch.Tensor, float]:
        """(callable, example input already on the device, seconds spent compiling / capturing / warming).

        The warm calls trigger compilation (torch.compile compiles on first call) and cuDNN's algorithm
        search; their time is returned separately and never enters a latency measurement.
        """
        example = self.cast_input(torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(warm_calls):
                self.forward(example)
            sync()
            fn = self.forward
            if self.variant.cuda_graph:
                fn = _capture_graph(self.forward, example, self.device)
            sync()
        return fn, example, time.perf_counter() - t0


def _capture_graph(forward, static_x: torch.Tensor, device: torch.device):
    """Capture one whole forward as a CUDA graph; replays cost one launch instead of one per kernel.

    The returned callable copies a new input into the static buffer unless it *is* the static buffer
    (the benchmark feeds the buffer itself, so it times the replay alone).
    """
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm on a side stream, as capture requires
        for _ in range(2):
            forward(static_x)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = forward(static_x)

    def replay(x: torch.Tensor) -> torch.Tensor:
        if x.data_ptr() != static_x.data_ptr():
            if x.shape != static_x.shape:
                raise ValueError(f"graph captured for input {tuple(static_x.shape)}, got {tuple(x.shape)}")
            static_x.copy_(x)
        graph.replay()
        return static_y
    # The graph reads the model's weights at fixed addresses but holds no reference to them: without this,
    # a caller that keeps only the callable (a group task's pairs) replays over freed, reused memory
    # (seen on an H200 as "illegal memory access" once a later variant had allocated there).
    replay.keep_alive = forward
    return replay


def prepare(model: nn.Module, variant: Variant, device: torch.device, *, reset: bool = True) -> Prepared:
    """Apply precision, BN folding, memory format and compile mode of `variant` to a copy of `model`."""
    reason = unsupported_reason(variant, device)
    if reason:
        raise Unsupported(reason)
    if variant.precision not in PRECISION_DTYPES:
        raise Unsupported(f"unknown precision {variant.precision!r}")
    weight_dtype, autocast_dtype = PRECISION_DTYPES[variant.precision]
    notes: list[str] = []
    n = 0
    m = copy.deepcopy(model).eval().to(device)
    if variant.bn_fold:
        m, n = fold_batchnorm(m)
        notes.append(f"folded {n} BatchNorm layers")
        if n == 0:
            raise Unsupported("no BatchNorm follows a conv or linear layer: nothing to fold")
    m = m.to(weight_dtype)
    if variant.memory_format == "channels_last":
        m = m.to(memory_format=torch.channels_last)
    for p in m.parameters():
        p.requires_grad_(False)
    size_mb, params = state_size_mb(m)
    if variant.compile == "fused":  # the folded net as this project's own Triton kernels
        from runner.fused import fused_forward
        m = fused_forward(m, torch.zeros(1, 3, 32, 32, device=device, dtype=weight_dtype))
    m = with_tta(m, getattr(variant, "tta", "none"))  # after folding: fx sees the plain model

    def with_autocast(x, _m=m):
        with torch.autocast(device.type, dtype=autocast_dtype):
            return _m(x)
    forward: Callable = m if autocast_dtype is None else with_autocast
    if variant.compile not in ("none", "fused"):
        if reset:  # no cache or guard left over from a previous variant in this process; a pair task
            torch._dynamo.reset()  # prepares two variants and keeps the first one's compiled code alive
        # dynamic=False: batch 1 and the evaluation batch get their own static graphs, as in deployment.
        forward = torch.compile(forward, mode=None if variant.compile == "default" else variant.compile,
                                dynamic=False)
    input_dtype = weight_dtype
    return Prepared(variant, device, forward, input_dtype, size_mb, params, n, notes)
