"""Top-1 accuracy on the test set through a callable: the training model, or a prepared variant.

Used by `runner/train.py` (per-epoch test accuracy) and `runner/sweep.py` (every variant is evaluated
through its own prepared callable: same precision, memory format, BN folding, compile mode and graph).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


@torch.inference_mode()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, *,
             amp_dtype: torch.dtype | None = None,
             prepare_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Percent correct over `batches` of (normalized float32 input, labels).

    `prepare_input` casts each batch the way the variant's inputs are cast (dtype, memory format);
    it runs outside the model so the callable sees exactly what the benchmark feeds it.
    """
    correct = 0
    total = 0
    for xb, yb in batches:
        if prepare_input is not None:
            xb = prepare_input(xb)
        device_type = xb.device.type
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = fn(xb)
        correct += (logits.argmax(1) == yb).sum().item()
        total += len(yb)
    if total == 0:
        raise ValueError("the test set is empty")
    return 100.0 * correct / total
