"""A parametric latency-first CIFAR-10 family: few convolutions, every BN foldable, one pooled head.

    models.get_model("fastnet_cifar", widths=(64, 256, 256), convs_per_block=(1, 1, 1))

At batch 1 on a GPU, latency is set by the number of kernels, not by FLOPs, so the family's knobs are
the ones that change the kernel count and the accuracy together: blocks (widths), convolutions per
block, the stem, activation, kernel size and where pooling happens. Sweep it with `arch_grid:` in a
sweep file (variants/loader.py).

Layer order, chosen for BN folding: each conv is followed DIRECTLY by its BN (conv -> BN -> act -> pool),
because runner.optimize.fold_batchnorm uses torch.fx `fuse`, which folds only a BN whose input is a
conv. airbench's conv -> pool -> BN order leaves its BN unfolded (pooling in between). The two orders
are not interchangeable in general: max-pool commutes with a per-channel affine only when its scale is
positive, and GELU is not monotone; so the family is trained in the foldable order.

The optional whitening stem is the airbench trick: a 2x2 (or 3x3) patch conv whose weights are the
eigenvectors of the training patches' covariance, scaled to unit variance, +/- (so that the following
activation keeps both signs). `init_whitening(model, train_images)` sets it; runner/train.py calls it for
every model with such a stem, before training, with the images normalised as training normalises them, and
the weights then stay frozen.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
# stem -> (kernel size, padding, initialised from data?)
STEMS = {"whiten2x2": (2, 0, True), "whiten3x3": (3, 1, True), "conv3x3": (3, 1, False)}
WHITEN_IMAGES = 5000  # airbench estimates the patch covariance from 5000 training images


def _positive_ints(name: str, value, length: int | None = None) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {value!r}")
    out = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {value!r}")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} has {len(out)} entries but widths has {length}; give one per block")
    return out


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(sorted(choices))}")


def _conv_bn_act(c_in: int, c_out: int, k: int, act: str) -> list[nn.Module]:
    # bias=False: the BN right after it supplies the shift (and folding adds it back as the conv's bias).
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), ACTS[act]()]


class FastNet(nn.Module):
    """stem -> blocks (conv -> BN -> act [-> pool], then extra conv -> BN -> act) -> global max-pool -> linear."""

    def __init__(self, *, num_classes: int, widths: tuple[int, ...], convs_per_block: tuple[int, ...],
                 pooled: tuple[bool, ...], stem: str, stem_width: int, act: str, kernel_size: int, pool: str,
                 logit_scale: float):
        super().__init__()
        k_stem, pad_stem, from_data = STEMS[stem]
        self.stem_kind = stem
        if from_data:
            # Bias on, no BN: the whitening filter is fixed, only its shift is learned (as in airbench).
            self.stem = nn.Sequential(nn.Conv2d(3, stem_width, k_stem, padding=pad_stem, bias=True), ACTS[act]())
        else:
            self.stem = nn.Sequential(*_conv_bn_act(3, stem_width, k_stem, act))
        blocks, c_in = [], stem_width
        for width, n_convs, do_pool in zip(widths, convs_per_block, pooled):
            layers = _conv_bn_act(c_in, width, kernel_size, act)
            if do_pool:
                layers.append(POOLS[pool](2))
            for _ in range(n_convs - 1):
                layers += _conv_bn_act(width, width, kernel_size, act)
            blocks.append(nn.Sequential(*layers))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head_pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(c_in, num_classes, bias=False)
        self.logit_scale = float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.flatten(self.head_pool(x), 1)
        # A fixed small output scale keeps early logits small (airbench); inductor fuses the multiply.
        return self.fc(x) * self.logit_scale


@register_model
def fastnet_cifar(*, num_classes: int = 10, widths: Sequence[int] = (64, 256, 256),
                  convs_per_block: Sequence[int] = (1, 1, 1), pooled: Sequence[bool] | None = None,
                  stem: str = "whiten2x2", stem_width: int = 24, act: str = "gelu", kernel_size: int = 3,
                  pool: str = "max", logit_scale: float = 1 / 9) -> nn.Module:
    """Build a FastNet. `pooled[i]` says whether block i halves the resolution (default: every block)."""
    widths = _positive_ints("widths", widths)
    convs_per_block = _positive_ints("convs_per_block", convs_per_block, len(widths))
    pooled = (True,) * len(widths) if pooled is None else tuple(pooled)
    if len(pooled) != len(widths) or not all(isinstance(p, bool) for p in pooled):
        raise ValueError(f"pooled must be one true/false per block ({len(widths)}), got {pooled!r}")
    _choice("stem", stem, STEMS)
    _choice("act", act, ACTS)
    _choice("pool", pool, POOLS)
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive integer (keeps the size), got {kernel_size!r}")
    if not isinstance(stem_width, int) or stem_width < 1:
        raise ValueError(f"stem_width must be a positive integer, got {stem_width!r}")
    k_stem, pad_stem, from_data = STEMS[stem]
    if from_data and (stem_width % 2 or stem_width > 2 * 3 * k_stem * k_stem):
        raise ValueError(f"stem {stem} needs an even stem_width <= {2 * 3 * k_stem * k_stem} "
                         f"(+/- one filter per patch eigenvector), got {stem_width}")
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be positive, got {logit_scale!r}")
    side = 32 + 2 * pad_stem - k_stem + 1
    for p in pooled:
        side = side // 2 if p else side
    if side < 1:
        raise ValueError(f"{sum(pooled)} pooled blocks shrink a 32x32 input below 1x1; pool fewer blocks")
    return FastNet(num_classes=num_classes, widths=widths, convs_per_block=convs_per_block, pooled=pooled,
                   stem=stem, stem_width=stem_width, act=act, kernel_size=kernel_size, pool=pool,
                   logit_scale=logit_scale)


def has_whitening_stem(model: nn.Module) -> bool:
    return isinstance(model, FastNet) and STEMS[model.stem_kind][2]


@torch.no_grad()
def init_whitening(model: nn.Module, train_images: torch.Tensor, *, eps: float = 5e-4,
                   max_images: int = WHITEN_IMAGES) -> None:
    """Set the whitening stem from data and freeze its weights (its bias stays trainable).

    `train_images`: (N, 3, 32, 32) float, normalised exactly as training normalises them (the caller's
    job: models/ knows nothing of the data pipeline, runner.data.normalizer does it). Filter i is v_i / sqrt(lambda_i + eps) for the i-th largest
    eigenpair of the (centred) patch covariance; the bias centres it, so the stem's output on training
    patches has ~unit variance per filter and no correlation between the first half of the filters.
    """
    if not has_whitening_stem(model):
        raise ValueError("init_whitening needs a fastnet_cifar model built with a whiten* stem")
    conv: nn.Conv2d = model.stem[0]
    x = train_images[:max_images]
    if not torch.is_floating_point(x):
        raise TypeError(f"init_whitening takes normalised float images, got {x.dtype}")
    mean, cov = _patch_moments(x, conv.kernel_size[0], conv.padding[0])
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    half = conv.out_channels // 2
    vals, vecs = eigvals.flip(0)[:half], eigvecs.flip(1)[:, :half]
    filters = (vecs / torch.sqrt(vals.clamp_min(0) + eps)).T           # (half, 3*k*k)
    weight = torch.cat([filters, -filters]).reshape(conv.weight.shape)
    bias = -(torch.cat([filters, -filters]) @ mean)
    conv.weight.copy_(weight.to(conv.weight))
    conv.bias.copy_(bias.to(conv.bias))
    conv.weight.requires_grad_(False)


def _patch_moments(x: torch.Tensor, k: int, padding: int, chunk: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of all k x k patches the stem sees, accumulated a chunk of images at
    a time: 5000 images hold ~5M patches, too many to hold in float64 at once."""
    total, outer, n = 0.0, 0.0, 0
    for i in range(0, len(x), chunk):
        # (B, 3*k*k, L) -> (B*L, 3*k*k); unfold orders each patch (channel, row, col), like a conv weight.
        p = F.unfold(x[i:i + chunk].double(), k, padding=padding).transpose(1, 2).reshape(-1, x.shape[1] * k * k)
        total, outer, n = total + p.sum(0), outer + p.T @ p, n + len(p)
    mean = total / n
    return mean, (outer - n * torch.outer(mean, mean)) / (n - 1)
