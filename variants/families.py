"""Architecture arguments of a model entry: `arch_args` bound to the builder's signature at load (as
torchvision's `get_model_builder` callers do), and `arch_grid`, which turns one entry into a family with one
model per combination of its lists:

    fast: {arch: fastnet_cifar, arch_args: {act: gelu},
           arch_grid: {widths: [[64, 128, 256], [64, 256, 256]], convs_per_block: [[1, 1, 1], [2, 2, 2]]}}

gives fast-w64.128.256-cpb1.1.1, ... (see `_token`); variants/loader.py lets `fast` stand for all four in
grid / exclude. Member keys name checkpoints and result files, so `_token` must never change its output.
"""
from __future__ import annotations

import inspect
import itertools
import math
import re
from typing import Any

from variants import checks
from variants.checker import Checker


def members(c: Checker, where: str, key: str, m: dict) -> dict[str, dict[str, Any]]:
    """{model key: builder arguments} of one `models.<key>` entry: itself, or one member per combination
    of its `arch_grid` (on top of its `arch_args`). Every argument set is bound to the builder's signature
    and the model built on the meta device here, so a wrong argument fails at load, not in a training task."""
    base, grid = _read(c, where, m)
    _check_arg_names(c, where, m["arch"], [*base, *grid], grid)
    if not grid:
        _check_build(c, f"{where}.arch_args", m["arch"], base)
        return {key: base}
    return _expand(c, where, key, m["arch"], base, grid)


def _read(c: Checker, where: str, m: dict) -> tuple[dict[str, Any], dict[str, list]]:
    """The entry's `arch_args` (values frozen) and `arch_grid` (lists, one argument in one place only)."""
    base = {k: _frozen(c, v, f"{where}.arch_args.{k}") for k, v in c.free_mapping(m.get("arch_args"),
                                                                                   f"{where}.arch_args").items()}
    grid = c.free_mapping(m.get("arch_grid"), f"{where}.arch_grid")
    for name, values in grid.items():
        if name in base:
            raise c.fail(f"{where}.arch_grid.{name}", "also set in arch_args; set it in one place")
        if not isinstance(values, list) or not values:
            raise c.fail(f"{where}.arch_grid.{name}", f"expected a non-empty list of values, got {values!r}")
    return base, grid


def _expand(c: Checker, where: str, key: str, arch: str, base: dict, grid: dict) -> dict[str, dict[str, Any]]:
    """One member per combination of the grid's lists; each member's key is the family key + its tokens."""
    out: dict[str, dict[str, Any]] = {}
    names = list(grid)  # YAML order: the order of the tokens in the member keys
    if math.prod(len(grid[n]) for n in names) > checks.MAX_VARIANTS:  # each member is built: bound them first
        raise c.fail(f"{where}.arch_grid", f"gives more than {checks.MAX_VARIANTS:,} models")
    for combo in itertools.product(*(grid[n] for n in names)):
        combo = {n: _frozen(c, v, f"{where}.arch_grid.{n}") for n, v in zip(names, combo)}
        member = "-".join([key, *(_token(n, v) for n, v in combo.items())])
        if member in out:
            raise c.fail(f"{where}.arch_grid", f"two combinations give the same model key {member!r}")
        _check_build(c, f"{where}.arch_grid ({member})", arch, {**base, **combo})
        checks.plain_name(c.fail, member, f"{where}.arch_grid ({member})")  # it names files too
        out[member] = {**base, **combo}
    return out


def _check_arg_names(c: Checker, where: str, arch: str, names: list[str], grid: dict) -> None:
    from models.registry import get_builder

    sig = inspect.signature(get_builder(arch))
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in names:
        path = f"{where}.{'arch_grid' if name in grid else 'arch_args'}.{name}"
        if name == "num_classes":
            raise c.fail(path, "set by the runner (10 classes), not an architecture argument")
        if name not in params and not takes_any:
            allowed = ", ".join(n for n, p in params.items() if n != "num_classes"
                                and p.kind is not inspect.Parameter.VAR_KEYWORD)
            raise c.fail(path, f"unknown argument of {arch}; allowed: {allowed or '(none)'}")
    try:  # torchvision's get_model_builder does the same: the call must fit the signature
        sig.bind(num_classes=10, **{n: None for n in names})
    except TypeError as e:
        raise c.fail(f"{where}.arch_args", f"does not fit {arch}{sig}: {e}") from None


def _check_build(c: Checker, where: str, arch: str, args: dict[str, Any]) -> None:
    """Build on the meta device (no memory, no init cost): the builder's own checks run at load."""
    if not args:
        return  # the builder's defaults: nothing user-given to check (and existing sweeps load as before)
    import torch

    from models.registry import get_builder

    try:
        with torch.device("meta"):
            get_builder(arch)(num_classes=10, **args)
    except (TypeError, ValueError) as e:
        raise c.fail(where, f"{arch} rejects these arguments: {e}") from None


def _frozen(c: Checker, value: Any, where: str) -> Any:
    """YAML lists become tuples, so that TrainSpec stays hashable and frozen."""
    if isinstance(value, list):
        return tuple(_frozen(c, v, where) for v in value)
    if isinstance(value, dict):
        raise c.fail(where, "expected a value or a list, got a mapping")
    return value


def _token(name: str, value: Any) -> str:
    """One part of a family member's key: a string value as itself (`gelu`), anything else after the
    initials of the argument's name (widths (64, 128) -> `w64.128`, convs_per_block -> `cpb1.1.1`).
    Only letters, digits, '.' and '_' (the '-' separates the tokens), so the key is a safe file name."""
    text = value if isinstance(value, str) else "".join(w[:1] for w in name.split("_")) + _fmt(value)
    return re.sub(r"[^A-Za-z0-9._]", "_", text)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return ".".join(_fmt(v) for v in value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
