"""Variant registry: YAML -> frozen, validated `SweepSpec` (models to train + variants to measure).

    python -m runner list --config variants/default.yaml     # prints what this module expands

A sweep file declares the models to train (architecture + recipe), one or more grids of axes
(precision x memory_format x compile x cuda_graph x bn_fold), exclusions, and named rows carrying the
brief's ids (B1, B2, O1, ...). Expansion is deterministic: the same YAML always gives the same ids.
Every mapping is checked against its allowed keys; a wrong key fails with the file, the key path and the
keys that are allowed, before anything runs.

A model's `arch_args` are bound to its builder's signature (and the model built on the meta device) at
load; `arch_grid` turns one model entry into a family, one model per combination of its lists:

    fast: {arch: fastnet_cifar, arch_args: {act: gelu},
           arch_grid: {widths: [[64, 128, 256], [64, 256, 256]], convs_per_block: [[1, 1, 1], [2, 2, 2]]}}

gives fast-w64.128.256-cpb1.1.1, ... (see `_token`); `fast` then stands for all four in grid / exclude.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from variants import checks

PRECISIONS = ("fp32", "fp16", "bf16", "amp_fp16")
MEMORY_FORMATS = ("contiguous", "channels_last")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
AXES = ("precision", "memory_format", "compile", "cuda_graph", "bn_fold")
# The order in which optimisations stack, each with the value that means "not applied": a variant's parent
# is the same variant with the last applied one reset (runner/pairs.py, the report's decisions).
OPTIMISATION_ORDER = (("precision", "fp32"), ("memory_format", "contiguous"), ("compile", "none"),
                      ("cuda_graph", False), ("bn_fold", False))
# Short tokens used in variant ids, so an id reads like the variant: resnet18-fp16-cl-ro-graph-fold.
_ID_TOKENS = {
    "contiguous": "nchw", "channels_last": "cl",
    "none": "eager", "default": "inductor", "reduce-overhead": "ro", "max-autotune": "ma",
    "max-autotune-no-cudagraphs": "manocg",
}


class SpecError(ValueError):
    """A sweep file that cannot be used; the message names the file and the key path."""


@dataclass(frozen=True)
class Recipe:
    """How one model is trained. Defaults are a plain, fast GPU recipe (see runner/train.py)."""
    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.2                 # peak LR of the one-cycle schedule, for batch_size
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_frac: float = 0.2        # fraction of steps spent ramping the LR up
    cutout: int = 0                 # side of the square zeroed per training image (0 = off), after flip+crop
    amp: str = "bf16"               # bf16 | fp16 | none (training only; inference precision is an axis)
    channels_last: bool = True
    compile: bool = False           # torch.compile the training step's model
    deterministic: bool = False     # fixed cuDNN algorithms: the same seed gives the same weights (GPU)
    train_subset: int = 0           # 0 = whole train set; >0 = first N images (CPU-sized runs)
    test_subset: int = 0
    distill_alpha: float = 0.9      # weight of the KL term when a teacher is set
    distill_temperature: float = 4.0


# Allowed value ranges of the numeric recipe fields: (low, high, low inclusive?, high inclusive?).
# A value outside fails at load time, naming the key, instead of producing NaNs minutes into a run.
RECIPE_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "epochs": (1, float("inf"), True, False),
    "batch_size": (1, float("inf"), True, False),
    "lr": (0, float("inf"), False, False),
    "momentum": (0, 1, True, False),
    "weight_decay": (0, float("inf"), True, False),
    "label_smoothing": (0, 1, True, False),
    "warmup_frac": (0, 1, True, False),
    "cutout": (0, 32, True, True),
    "train_subset": (0, float("inf"), True, False),
    "test_subset": (0, float("inf"), True, False),
    "distill_alpha": (0, 1, True, True),
    "distill_temperature": (0, float("inf"), False, False),
}


def recipe_range_error(field_name: str, value: float) -> str | None:
    """Why `value` is out of range for `field_name`, or None when it is fine."""
    lo, hi, lo_in, hi_in = RECIPE_RANGES[field_name]
    ok = (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
    if ok:
        return None
    left, right = ("[" if lo_in else "("), ("]" if hi_in else ")")
    hi_txt = "inf" if hi == float("inf") else f"{hi:g}"
    return f"{value!r} is out of range; expected a value in {left}{lo:g}, {hi_txt}{right}"


@dataclass(frozen=True)
class TrainSpec:
    """One model to train from scratch (weights=None). `teacher` names another TrainSpec for distillation."""
    key: str
    arch: str
    arch_args: tuple[tuple[str, Any], ...] = ()
    recipe: Recipe = field(default_factory=Recipe)
    teacher: str | None = None
    seed: int = 0

    @property
    def spec_hash(self) -> str:
        return stable_hash(dataclasses.asdict(self))


@dataclass(frozen=True)
class BenchSpec:
    warmup: int = 200
    iters: int = 1000
    repeats: int = 3
    eval_batch_size: int = 1000
    cv_flag_pct: float = 3.0        # repeats whose p50 CV exceeds this are flagged as unstable
    pair_rounds: int = 10           # paired parent/child rounds per keep/drop decision (0 = no pairs)
    recheck: int = 6                # rows re-timed at the end besides the named ones and the chosen (-1 = none)


@dataclass(frozen=True)
class DataSpec:
    source: str = "cifar10"         # cifar10 | synthetic | a path (image folders, or train/test .tar.xz)
    root: str | None = None         # download / cache directory for cifar10


@dataclass(frozen=True)
class Variant:
    """One (trained model x inference optimisation) to measure."""
    model: str
    precision: str = "fp32"
    memory_format: str = "contiguous"
    compile: str = "none"
    cuda_graph: bool = False
    bn_fold: bool = False
    brief_id: str = ""              # B1, O2, ... when a named row matches this variant
    label: str = ""

    @property
    def variant_id(self) -> str:
        parts = [self.model, self.precision, _ID_TOKENS[self.memory_format], _ID_TOKENS[self.compile]]
        if self.cuda_graph:
            parts.append("graph")
        if self.bn_fold:
            parts.append("fold")
        return "-".join(parts)

    def axes(self) -> dict[str, Any]:
        return {a: getattr(self, a) for a in AXES}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source_file: str
    seed: int
    data: DataSpec
    bench: BenchSpec
    models: tuple[TrainSpec, ...]
    variants: tuple[Variant, ...]

    def model(self, key: str) -> TrainSpec:
        return next(m for m in self.models if m.key == key)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def capped(self, *, max_epochs: int | None = None, bench_iters: int | None = None) -> "SweepSpec":
        """A shortened copy: every model's epochs and the bench's warm-up / timed iterations capped
        (never raised). Model spec hashes change with it, so a capped run never reuses a full run's rows."""
        for flag, cap in (("--max-epochs", max_epochs), ("--bench-iters", bench_iters)):
            if cap is not None and cap < 1:
                raise SpecError(f"{flag} {cap}: expected a positive integer")
        spec = self
        if max_epochs:
            spec = dataclasses.replace(spec, models=tuple(
                dataclasses.replace(m, recipe=dataclasses.replace(m.recipe, epochs=min(m.recipe.epochs, max_epochs)))
                for m in spec.models))
        if bench_iters:
            b = spec.bench
            spec = dataclasses.replace(spec, bench=dataclasses.replace(
                b, iters=min(b.iters, bench_iters), warmup=min(b.warmup, bench_iters)))
        return spec


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


class _Checker:
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


_TOP_KEYS = {"sweep", "seed", "data", "bench", "models", "grid", "exclude", "named"}
_MODEL_KEYS = {"arch", "arch_args", "arch_grid", "recipe", "teacher"}
_GRID_KEYS = {"models", *AXES}
_NAMED_KEYS = {"model", "label", *AXES}


def load_sweep(path: str | Path, *, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Load, validate and expand a sweep file. `overrides` patches recipe fields of every model
    (e.g. {"epochs": 2} for a shortened run) and is recorded in the resolved config."""
    path = str(path)
    raw = checks.read_yaml(path, SpecError)  # a missing, binary or directory path: one line, no traceback
    c = _Checker(path)
    raw = c.mapping(raw, "", _TOP_KEYS, required={"models"})
    # The sweep name becomes runs/<name>/: a plain name, never a path (checks.plain_name says why).
    name = checks.plain_name(c.fail, raw.get("sweep", Path(path).stem), "sweep")
    seed = checks.seed(c.fail, raw.get("seed", 0))
    data = c.dataclass(DataSpec, raw.get("data"), "data")
    checks.data(c.fail, data)
    bench = c.dataclass(BenchSpec, raw.get("bench"), "bench")
    checks.bench(c.fail, bench)

    from models import list_models  # imported here so `variants` stays importable without torch

    archs = list_models()
    models: dict[str, TrainSpec] = {}
    families: dict[str, list[str]] = {}   # a model key with arch_grid -> the keys it expands to
    for key, m in c.free_mapping(raw["models"], "models").items():
        where = f"models.{key}"
        checks.plain_name(c.fail, key, where)  # a model key names its checkpoint and training files
        m = c.mapping(m, where, _MODEL_KEYS, required={"arch"})
        c.choice(m["arch"], f"{where}.arch", tuple(archs))
        recipe_raw = dict(checks.mapping_or_none(c.fail, m.get("recipe"), f"{where}.recipe"))
        recipe_raw.update(overrides or {})
        recipe = c.dataclass(Recipe, recipe_raw, f"{where}.recipe")
        c.choice(recipe.amp, f"{where}.recipe.amp", ("bf16", "fp16", "none"))
        for fname in RECIPE_RANGES:
            problem = recipe_range_error(fname, getattr(recipe, fname))
            if problem:
                raise c.fail(f"{where}.recipe.{fname}", problem)
        checks.recipe(c.fail, recipe, f"{where}.recipe")
        members = _arch_members(c, where, key, m)
        if "arch_grid" in m:
            families[key] = list(members)
        for member, arch_args in members.items():
            if member in models:
                raise c.fail(where, f"model key {member!r} is declared twice (check arch_grid keys)")
            models[member] = TrainSpec(key=member, arch=m["arch"], arch_args=tuple(sorted(arch_args.items())),
                                       recipe=recipe, teacher=m.get("teacher"), seed=seed)
    if not models:
        raise c.fail("models", "declare at least one model")
    for key, m in models.items():
        if m.teacher is not None:
            c.choice(m.teacher, f"models.{key}.teacher", tuple(k for k in models if k != key))
            if models[m.teacher].teacher is not None:
                raise c.fail(f"models.{key}.teacher", "a teacher cannot itself be distilled (one level only)")

    axis_choices = {"precision": PRECISIONS, "memory_format": MEMORY_FORMATS, "compile": COMPILE_MODES,
                    "cuda_graph": (False, True), "bn_fold": (False, True)}

    def axis_values(block: dict, where: str, axis: str) -> list:
        vals = block.get(axis, [dataclasses.fields(Variant)[1 + AXES.index(axis)].default])
        vals = vals if isinstance(vals, list) else [vals]
        return [c.choice(_norm(v), f"{where}.{axis}", axis_choices[axis]) for v in vals]

    grids = raw.get("grid") or []
    grids = grids if isinstance(grids, list) else [grids]
    def model_keys(value: Any, where: str) -> list[str]:
        """Model keys of a grid / exclude block; a family's key stands for all its members."""
        keys = value if isinstance(value, list) else [value]
        for k in keys:
            c.choice(k, where, (*models, *families))
        return [member for k in keys for member in families.get(k, [k])]

    excludes = [c.mapping(e, f"exclude[{i}]", _GRID_KEYS)
                for i, e in enumerate(checks.list_or_none(c.fail, raw.get("exclude"), "exclude"))]
    excludes = [{**e, "models": model_keys(e["models"], f"exclude[{i}].models")} if "models" in e else e
                for i, e in enumerate(excludes)]
    for i, e in enumerate(excludes):
        for axis in AXES:
            if axis in e:
                axis_values(e, f"exclude[{i}]", axis)

    variants: dict[str, Variant] = {}
    for gi, block in enumerate(grids):
        where = f"grid[{gi}]"
        block = c.mapping(block, where, _GRID_KEYS)
        keys = model_keys(block.get("models", list(models)), f"{where}.models")
        for combo in itertools.product(keys, *(axis_values(block, where, a) for a in AXES)):
            v = Variant(combo[0], **dict(zip(AXES, combo[1:])))
            if not any(_matches(v, e) for e in excludes):
                variants.setdefault(v.variant_id, v)

    for bid, row in c.free_mapping(raw.get("named"), "named").items():
        where = f"named.{bid}"
        row = c.mapping(row, where, _NAMED_KEYS, required={"model"})
        c.choice(row["model"], f"{where}.model", tuple(models))
        axes = {a: axis_values(row, where, a)[0] for a in AXES}
        v = Variant(row["model"], **axes, brief_id=str(bid), label=str(row.get("label", "")))
        if v.variant_id in variants and variants[v.variant_id].brief_id:
            raise c.fail(where, f"same variant as named.{variants[v.variant_id].brief_id}")
        variants[v.variant_id] = v  # a named row labels the grid point it matches (or adds one)

    if not variants:
        raise c.fail("grid", "expands to no variant (check grid and exclude)")
    checks.variant_ids(c.fail, list(variants))  # each becomes results/<id>.parquet
    ordered = sorted(variants.values(), key=lambda v: (list(models).index(v.model), v.variant_id))
    return SweepSpec(name=name, source_file=path, seed=seed, data=data, bench=bench,
                     models=tuple(models.values()), variants=tuple(ordered))


def _norm(v: Any) -> Any:
    """YAML spells booleans as on/off/true/false; accept the axis names users write."""
    if isinstance(v, str) and v.lower() in ("on", "off"):
        return v.lower() == "on"
    return v


def _matches(v: Variant, rule: dict) -> bool:
    for k, want in rule.items():
        want = want if isinstance(want, list) else [want]
        have = v.model if k == "models" else getattr(v, k)
        if have not in [_norm(w) for w in want]:
            return False
    return True


# ---- architecture arguments and families (arch_args / arch_grid) -------------------------------------

def _arch_members(c: _Checker, where: str, key: str, m: dict) -> dict[str, dict[str, Any]]:
    """{model key: builder arguments} of one `models.<key>` entry: itself, or one member per combination
    of its `arch_grid` (on top of its `arch_args`). Every argument set is bound to the builder's signature
    and the model built on the meta device here, so a wrong argument fails at load, not in a training task."""
    base = {k: _frozen(c, v, f"{where}.arch_args.{k}") for k, v in c.free_mapping(m.get("arch_args"),
                                                                                   f"{where}.arch_args").items()}
    grid = c.free_mapping(m.get("arch_grid"), f"{where}.arch_grid")
    for name, values in grid.items():
        if name in base:
            raise c.fail(f"{where}.arch_grid.{name}", "also set in arch_args; set it in one place")
        if not isinstance(values, list) or not values:
            raise c.fail(f"{where}.arch_grid.{name}", f"expected a non-empty list of values, got {values!r}")
    _check_arg_names(c, where, m["arch"], [*base, *grid], grid)
    if not grid:
        _check_build(c, f"{where}.arch_args", m["arch"], base)
        return {key: base}
    members: dict[str, dict[str, Any]] = {}
    names = list(grid)  # YAML order: the order of the tokens in the member keys
    for combo in itertools.product(*(grid[n] for n in names)):
        combo = {n: _frozen(c, v, f"{where}.arch_grid.{n}") for n, v in zip(names, combo)}
        member = "-".join([key, *(_token(n, v) for n, v in combo.items())])
        if member in members:
            raise c.fail(f"{where}.arch_grid", f"two combinations give the same model key {member!r}")
        _check_build(c, f"{where}.arch_grid ({member})", m["arch"], {**base, **combo})
        checks.plain_name(c.fail, member, f"{where}.arch_grid ({member})")  # it names files too
        members[member] = {**base, **combo}
    return members


def _check_arg_names(c: _Checker, where: str, arch: str, names: list[str], grid: dict) -> None:
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


def _check_build(c: _Checker, where: str, arch: str, args: dict[str, Any]) -> None:
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


def _frozen(c: _Checker, value: Any, where: str) -> Any:
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
