"""Top-1 accuracy on the test set through a callable: the training model, or a prepared variant.

Used by `runner/train.py` (per-epoch test accuracy) and `runner/sweep.py` (every variant is evaluated
through its own prepared callable: same precision, memory format, BN folding, compile mode and graph).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from runner.data import normalizer


@torch.inference_mode()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, *,
             amp_dtype: torch.dtype | None = None,
             prepare_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Percent correct over `batches` of (normalized float32 input, labels).

    `prepare_input` casts each batch the way the variant's inputs are cast (dtype, memory format);
    it runs outside the model so the callable sees exactly what the benchmark feeds it.
    """
    correct = total = 0
    for xb, yb in batches:
        if prepare_input is not None:
            xb = prepare_input(xb)
        with torch.autocast(xb.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = fn(xb)
        correct += (logits.argmax(1) == yb).sum().item()
        total += len(yb)
    if total == 0:
        raise ValueError("the test set is empty")
    return 100.0 * correct / total


# ---- a variant's predictions, for the sweep's accuracy pass and its numerical checks ---------------------

def normalized(images_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> the normalized float32 input every model is trained on, on `device`."""
    return normalizer(device)(torch.from_numpy(np.array(images_uint8)).to(device))


@torch.inference_mode()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], images_uint8: np.ndarray, device: torch.device,
            batch_size: int, cast: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fp32 logits (on the CPU) of every image, `batch_size` at a time through `fn`.

    The last batch is padded to `batch_size` with copies of its first image and the padding's logits are
    dropped: a callable with a static shape (a captured CUDA graph, a compiled graph) sees one shape only,
    so a test set that is not a multiple of the batch still runs through the same graph.
    """
    out = []
    for i in range(0, len(images_uint8), batch_size):
        xb = normalized(images_uint8[i:i + batch_size], device)
        n = len(xb)
        if n < batch_size:
            xb = torch.cat([xb, xb[:1].expand(batch_size - n, -1, -1, -1)])
        out.append(fn(cast(xb))[:n].float().cpu())  # copy now: a graph reuses its output buffer
    if not out:
        raise ValueError("the test set is empty")
    return torch.cat(out)


@torch.inference_mode()
def predict_one_by_one(fn: Callable[[torch.Tensor], torch.Tensor], static_x: torch.Tensor,
                       images_uint8: np.ndarray, device: torch.device,
                       cast: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Logits of the timed batch-1 callable, one image at a time, fed through its own input buffer."""
    out = []
    for i in range(len(images_uint8)):
        static_x.copy_(cast(normalized(images_uint8[i:i + 1], device)))
        out.append(fn(static_x).float().cpu())
    return torch.cat(out)


def top1(logits: torch.Tensor, labels: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(1) == torch.from_numpy(np.array(labels))).float().mean())


def max_rel_err(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """max |logits - reference| over the reference's largest |logit|: an error on the logits' own scale."""
    scale = float(reference.abs().max())
    return float((logits.float() - reference.float()).abs().max()) / (scale if scale > 0 else 1.0)
