"""Model registry: maps a name to a builder that returns an untrained nn.Module.

Used by the runner as `models.get_model("resnet18_cifar")` from `runner/train.py`.
The only global state is the `_REGISTRY` dict below.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}


class UnknownModelError(KeyError, ValueError):
    """Unknown model name; catchable as either KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would otherwise repr-quote the message
        return str(self.args[0]) if self.args else ""


def register_model(fn: Builder) -> Builder:
    """Decorator: register `fn` under `fn.__name__`; a duplicate name is an error."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str, *, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a fresh, randomly initialised model (never pretrained weights)."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; available: {', '.join(list_models())}"
        ) from None
    return builder(num_classes=num_classes, **kwargs)


def get_builder(name: str) -> Builder:
    """The registered builder itself, e.g. to bind YAML `arch_args` to its signature before training."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; available: {', '.join(list_models())}"
        ) from None
