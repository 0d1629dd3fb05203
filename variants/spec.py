"""The frozen objects a sweep file loads into: `SweepSpec` = models (`TrainSpec`, each with its `Recipe`) +
variants (`Variant`) + `BenchSpec` + `DataSpec`. variants/loader.py builds them; runner/ reads them.

    python -m runner list --config variants/default.yaml     # prints one SweepSpec

A model's `spec_hash` is its identity on disk: checkpoints are reused only when it matches, so a change to
`TrainSpec`, `Recipe` or `stable_hash` renames every checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from variants.axes import AXES, BY_NAME, id_parts

# The brief's bar: the chosen model is the fastest at or above this top-1 (a sweep file may set its own,
# `accuracy_bar_pct`); the one place in code that says 85.
ACCURACY_BAR_PCT = 85.0


class SpecError(ValueError):
    """A sweep file that cannot be used; the message names the file and the key path. It is one line of at
    most MAX_CHARS whatever it quotes (a key holding a newline, a long value): the CLI prints it as is."""
    MAX_CHARS = 500

    def __init__(self, message: str):
        text = " ".join(str(message).split())
        super().__init__(text if len(text) <= self.MAX_CHARS else text[:self.MAX_CHARS - 3] + "...")


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
    train_subset: int = 0           # 0 = whole train set; >0 = a fixed random N images (CPU-sized runs)
    test_subset: int = 0            # the same for the test set (runner/data.py Cifar.subset)
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
    pairs: bool = True              # keep / drop each optimisation from its parent's and its paired rounds
    recheck: int = 6                # rows re-timed at the end besides the named ones and the chosen (-1 = none, `all`)
    cudnn_autotune: bool = False    # cuDNN's kernel search per process; off: the same kernels in every process
    slices: int = 5                 # each repeat timed in this many slices, round-robin over a model's variants
    target_pct: float = 0.0         # time more slices until the p50's 95% interval is this narrow (+-%); 0: off
    max_s: float = 60.0             # ... or a variant's timing has taken this long (runner/intervals.plan_more)
    processes: int = 2              # processes that time every variant (2: a twin phase; runner/intervals.py)
    cpu_threads: int = 0            # torch threads of a benchmark actor on a CPU; 0: every CPU of its node


@dataclass(frozen=True)
class TrainPlan:
    per_gpu: int = 1                # trainings that share one GPU at a time (runner/engine/training.py says why)


@dataclass(frozen=True)
class DataSpec:
    source: str = "cifar10"         # cifar10 | synthetic | a path (image folders, or train/test .tar.xz)
    root: str | None = None         # download / cache directory for cifar10


@dataclass(frozen=True)
class Variant:
    """One (trained model x inference optimisation) to measure. The axis fields follow variants/axes.py's
    TABLE, in its order (positional construction relies on it; tests/test_variants.py checks it); their
    defaults are the table's."""
    model: str
    precision: str = BY_NAME["precision"].default
    memory_format: str = BY_NAME["memory_format"].default
    compile: str = BY_NAME["compile"].default
    cuda_graph: bool = BY_NAME["cuda_graph"].default
    bn_fold: bool = BY_NAME["bn_fold"].default
    tta: str = BY_NAME["tta"].default
    brief_id: str = ""              # B1, O2, ... when a named row matches this variant
    label: str = ""

    @property
    def variant_id(self) -> str:
        return "-".join([self.model, *id_parts(self.axes())])

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
    train: TrainPlan = TrainPlan()
    accuracy_bar_pct: float = ACCURACY_BAR_PCT

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
                b, iters=min(b.iters, bench_iters), warmup=min(b.warmup, bench_iters),
                slices=min(b.slices, bench_iters)))  # a slice needs a timed call
        return spec


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
