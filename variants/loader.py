"""Variant registry: YAML -> frozen, validated `SweepSpec` (models to train + variants to measure).

    python -m runner list --config variants/default.yaml     # prints what this module expands

A sweep file declares the models to train (architecture + recipe), one or more grids of axes
(precision x memory_format x compile x cuda_graph x bn_fold, variants/axes.py), exclusions, and named rows
carrying the brief's ids (B1, B2, O1, ...). Expansion is deterministic: the same YAML always gives the same
ids. `load_sweep` runs four steps, each a few short functions below:

    parse     checks.read_yaml: the file -> a raw mapping (one line, never a traceback, when it cannot)
    validate  the header (name, seed, data, bench), then each model: keys and types (checker.Checker),
              meanings (checks), arch_args bound to the builder (families)
    expand    grid blocks x axes, arch_grid families standing for their members, excludes, named rows
    name      variant ids (Variant.variant_id) checked as file names, in a stable order

Validation runs in file order and stops at the first error, so the order of the checks below decides which
of several mistakes a user is told about first; keep it.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from variants import checks, families
from variants.axes import AXES, BY_NAME, COMPILE_MODES, MEMORY_FORMATS, OPTIMISATION_ORDER, PRECISIONS, norm
from variants.checker import Checker
from variants.spec import (ACCURACY_BAR_PCT, BenchSpec, DataSpec, TrainPlan, Recipe, RECIPE_RANGES, SpecError,
                           SweepSpec, TrainSpec, Variant, recipe_range_error, stable_hash)

# Re-exported: variants/__init__.py and runner/ import these from here.
__all__ = ["AXES", "OPTIMISATION_ORDER", "COMPILE_MODES", "MEMORY_FORMATS", "PRECISIONS", "BenchSpec", "DataSpec",
           "Recipe", "RECIPE_RANGES", "SpecError", "SweepSpec", "TrainSpec", "Variant", "load_sweep",
           "recipe_range_error", "stable_hash"]

_TOP_KEYS = {"sweep", "seed", "data", "bench", "train", "models", "grid", "exclude", "named", "accuracy_bar_pct"}
_MODEL_KEYS = {"arch", "arch_args", "arch_grid", "recipe", "teacher"}
_GRID_KEYS = {"models", *AXES}
_NAMED_KEYS = {"model", "label", *AXES}
_TRAINING_AMP = ("bf16", "fp16", "none")


def load_sweep(path: str | Path, *, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Load, validate and expand a sweep file. `overrides` patches recipe fields of every model
    (e.g. {"epochs": 2} for a shortened run) and is recorded in the resolved config."""
    path = str(path)
    c = Checker(path)
    # parse: a missing, binary or directory path fails in one line, without a traceback
    raw = c.mapping(checks.read_yaml(path, SpecError), "", _TOP_KEYS, required={"models"})
    # validate
    name, seed, data, bench = _header(c, raw, path)
    models, fams = _models(c, raw["models"], seed, overrides or {})
    # expand
    excludes = _excludes(c, raw.get("exclude"), models, fams)
    variants = _grid_variants(c, raw.get("grid"), models, fams, excludes)
    _add_named(c, raw.get("named"), models, variants)
    train = c.dataclass(TrainPlan, raw.get("train"), "train")
    if not 1 <= train.per_gpu <= 8:
        raise c.fail("train.per_gpu", f"{train.per_gpu}: expected an integer from 1 to 8")
    bar = checks.accuracy_bar(c.fail, raw.get("accuracy_bar_pct", ACCURACY_BAR_PCT))
    # name
    return SweepSpec(name=name, source_file=path, seed=seed, data=data, bench=bench, train=train,
                     models=tuple(models.values()), variants=_ordered(c, variants, list(models)),
                     accuracy_bar_pct=bar)


# ---- validate ---------------------------------------------------------------------------------------

def _header(c: Checker, raw: dict, path: str) -> tuple[str, int, DataSpec, BenchSpec]:
    # The sweep name becomes runs/<name>/: a plain name, never a path (checks.plain_name says why).
    name = checks.plain_name(c.fail, raw.get("sweep", Path(path).stem), "sweep")
    seed = checks.seed(c.fail, raw.get("seed", 0))
    data = c.dataclass(DataSpec, raw.get("data"), "data")
    checks.data(c.fail, data)
    raw_bench = raw.get("bench")
    if isinstance(raw_bench, dict) and raw_bench.get("recheck") == "all":  # every ok row is re-timed
        raw_bench = {**raw_bench, "recheck": checks.BENCH_RANGES["recheck"][1]}
    bench = c.dataclass(BenchSpec, raw_bench, "bench")
    checks.bench(c.fail, bench)
    return name, seed, data, bench


def _models(c: Checker, raw_models: Any, seed: int, overrides: dict) -> tuple[dict[str, TrainSpec],
                                                                              dict[str, list[str]]]:
    """{model key: TrainSpec} in file order (an arch_grid family's members in its place), and
    {family key: its member keys}."""
    from models import list_models  # imported here so `variants` stays importable without torch

    archs = tuple(list_models())
    models: dict[str, TrainSpec] = {}
    fams: dict[str, list[str]] = {}
    for key, m in c.free_mapping(raw_models, "models").items():
        where = f"models.{key}"
        checks.plain_name(c.fail, key, where)  # a model key names its checkpoint and training files
        m = c.mapping(m, where, _MODEL_KEYS, required={"arch"})
        c.choice(m["arch"], f"{where}.arch", archs)
        recipe = _recipe(c, m.get("recipe"), f"{where}.recipe", overrides)
        members = families.members(c, where, key, m)
        if "arch_grid" in m:
            fams[key] = list(members)
        for member, arch_args in members.items():
            if member in models:
                raise c.fail(where, f"model key {member!r} is declared twice (check arch_grid keys)")
            models[member] = TrainSpec(key=member, arch=m["arch"], arch_args=tuple(sorted(arch_args.items())),
                                       recipe=recipe, teacher=m.get("teacher"), seed=seed)
    if not models:
        raise c.fail("models", "declare at least one model")
    _check_teachers(c, models)
    return models, fams


def _recipe(c: Checker, value: Any, where: str, overrides: dict) -> Recipe:
    recipe = c.dataclass(Recipe, {**checks.mapping_or_none(c.fail, value, where), **overrides}, where)
    c.choice(recipe.amp, f"{where}.amp", _TRAINING_AMP)
    for fname in RECIPE_RANGES:
        problem = recipe_range_error(fname, getattr(recipe, fname))
        if problem:
            raise c.fail(f"{where}.{fname}", problem)
    checks.recipe(c.fail, recipe, where)
    return recipe


def _check_teachers(c: Checker, models: dict[str, TrainSpec]) -> None:
    for key, m in models.items():
        if m.teacher is not None:
            c.choice(m.teacher, f"models.{key}.teacher", tuple(k for k in models if k != key))
            if models[m.teacher].teacher is not None:
                raise c.fail(f"models.{key}.teacher", "a teacher cannot itself be distilled (one level only)")


def _axis_values(c: Checker, block: dict, where: str, axis: str) -> list:
    """The values one grid / exclude / named block gives an axis: a scalar or a list, the default when absent."""
    vals = block.get(axis, [BY_NAME[axis].default])
    vals = vals if isinstance(vals, list) else [vals]
    # each value once: a list of 1,000 repeats (an alias makes it cheap) must not multiply the grid's product
    return list(dict.fromkeys(c.choice(norm(v), f"{where}.{axis}", BY_NAME[axis].values) for v in vals))


def _model_keys(c: Checker, value: Any, where: str, models: dict, fams: dict) -> list[str]:
    """Model keys of a grid / exclude block; a family's key stands for all its members."""
    keys = value if isinstance(value, list) else [value]
    for k in keys:
        c.choice(k, where, (*models, *fams))
    return list(dict.fromkeys(member for k in keys for member in fams.get(k, [k])))


# ---- expand -----------------------------------------------------------------------------------------

def _excludes(c: Checker, value: Any, models: dict, fams: dict) -> list[dict]:
    """Exclude rules, their `models` expanded to member keys. Checked section by section over all rules
    (keys, then models, then axis values), as the first loader did, so the first error reported is the same."""
    rules = [c.mapping(e, f"exclude[{i}]", _GRID_KEYS)
             for i, e in enumerate(checks.list_or_none(c.fail, value, "exclude"))]
    rules = [{**e, "models": _model_keys(c, e["models"], f"exclude[{i}].models", models, fams)}
             if "models" in e else e for i, e in enumerate(rules)]
    for i, e in enumerate(rules):
        for axis in AXES:
            if axis in e:
                _axis_values(c, e, f"exclude[{i}]", axis)
    return rules


def _grid_variants(c: Checker, value: Any, models: dict, fams: dict, excludes: list[dict]) -> dict[str, Variant]:
    """{variant id: Variant} of every grid block's product (models x axes), less the excluded; a point two
    blocks share is kept once."""
    blocks = value or []
    blocks = blocks if isinstance(blocks, list) else [blocks]
    variants: dict[str, Variant] = {}
    for gi, block in enumerate(blocks):
        where = f"grid[{gi}]"
        block = c.mapping(block, where, _GRID_KEYS)
        keys = _model_keys(c, block.get("models", list(models)), f"{where}.models", models, fams)
        axes = [_axis_values(c, block, where, a) for a in AXES]
        if len(keys) * math.prod(map(len, axes)) + len(variants) > checks.MAX_VARIANTS:  # before building any
            raise c.fail(where, f"expands to more than {checks.MAX_VARIANTS:,} variants")
        for combo in itertools.product(keys, *axes):
            v = Variant(combo[0], **dict(zip(AXES, combo[1:])))
            if not any(_matches(v, e) for e in excludes):
                variants.setdefault(v.variant_id, v)
    return variants


def _matches(v: Variant, rule: dict) -> bool:
    for k, want in rule.items():
        want = want if isinstance(want, list) else [want]
        have = v.model if k == "models" else getattr(v, k)
        if have not in [norm(w) for w in want]:
            return False
    return True


def _add_named(c: Checker, value: Any, models: dict, variants: dict[str, Variant]) -> None:
    """Named rows (B1, O2, ...): each labels the grid point it matches, or adds it when no grid has it."""
    for bid, row in c.free_mapping(value, "named").items():
        where = f"named.{bid}"
        row = c.mapping(row, where, _NAMED_KEYS, required={"model"})
        c.choice(row["model"], f"{where}.model", tuple(models))
        axes = {}
        for a in AXES:
            vals = _axis_values(c, row, where, a)
            if len(vals) != 1:  # a named row is one variant: one value per axis
                raise c.fail(f"{where}.{a}", f"expected one value, got {len(vals)}: {row.get(a)!r}")
            axes[a] = vals[0]
        v = Variant(row["model"], **axes, brief_id=str(bid), label=str(row.get("label", "")))
        if v.variant_id in variants and variants[v.variant_id].brief_id:
            raise c.fail(where, f"same variant as named.{variants[v.variant_id].brief_id}")
        variants[v.variant_id] = v


# ---- name -------------------------------------------------------------------------------------------

def _ordered(c: Checker, variants: dict[str, Variant], model_order: list[str]) -> tuple[Variant, ...]:
    """The variants by model (file order), then id; every id checked as the file name it becomes."""
    if not variants:
        raise c.fail("grid", "expands to no variant (check grid and exclude)")
    checks.variant_ids(c.fail, list(variants))  # each becomes results/<id>.parquet
    return tuple(sorted(variants.values(), key=lambda v: (model_order.index(v.model), v.variant_id)))
