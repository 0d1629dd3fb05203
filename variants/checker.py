"""Keys and types of a sweep file: every mapping checked against its allowed keys, every value against its
field's type, every error a SpecError naming the file and the dotted key path:

    variants/x.yaml: models.resnet18.recipe.epoch: unknown key; allowed keys: amp, batch_size, ...

variants/loader.py drives it; what the values *mean* (plain names, ranges) is variants/checks.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from variants.spec import SpecError


class Checker:
    """Validates one YAML file; every error names the file and the dotted key path."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, msg: str) -> SpecError:
        return SpecError(f"{self.path}: {where or 'top level'}: {msg}")

    def mapping(self, value: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown key; allowed keys: {', '.join(sorted(allowed))}")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(where or "top level", f"missing required key '{missing[0]}'")
        return value

    def free_mapping(self, value: Any, where: str) -> dict:
        """A mapping whose keys are the user's names (models, named rows, builder arguments)."""
        return self.mapping(value, where, set(value) if isinstance(value, dict) else set())

    def choice(self, value: Any, where: str, choices: tuple) -> Any:
        if value not in choices:
            raise self.fail(where, f"{value!r} is not one of {', '.join(map(str, choices))}")
        return value

    def dataclass(self, cls, value: Any, where: str):
        """Build a frozen dataclass from a mapping, checking keys and coercing each value to its field type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        raw = self.mapping(value, where, set(fields))
        out = {}
        for k, v in raw.items():
            default = fields[k].default
            kind = type(default) if default is not None and default is not dataclasses.MISSING else None
            try:
                if kind is bool:
                    if not isinstance(v, bool):
                        raise TypeError
                elif kind in (int, float):
                    if isinstance(v, bool) or (kind is int and not float(v).is_integer()):
                        raise TypeError
                    v = kind(v)
                elif kind is str and not isinstance(v, str):
                    raise TypeError
            except (TypeError, ValueError):
                raise self.fail(f"{where}.{k}", f"expected {kind.__name__}, got {v!r}") from None
            out[k] = v
        return cls(**out)
