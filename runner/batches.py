"""Training batches on the device: the whole split as one tensor, per-image flip / pad-crop and cutout done
batch-wide there (no DataLoader, no workers: airbench's way). Used by runner/train.py.
"""
from __future__ import annotations

import numpy as np
import torch

from runner.data import normalizer


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
