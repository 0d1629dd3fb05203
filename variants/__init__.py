"""The variant registry: YAML sweep files in this folder and the loader that expands them.

axes (each inference axis once, as data) -> spec (the frozen objects) <- loader (YAML -> SweepSpec, with
checker for keys and types, checks for meanings, families for arch_args / arch_grid).
"""
from variants.axes import AXES, COMPILE_MODES, MEMORY_FORMATS, OPTIMISATION_ORDER, PRECISIONS
from variants.loader import load_sweep
from variants.spec import BenchSpec, DataSpec, TrainPlan, Recipe, SpecError, SweepSpec, TrainSpec, Variant

__all__ = ["AXES", "OPTIMISATION_ORDER", "COMPILE_MODES", "MEMORY_FORMATS", "PRECISIONS", "BenchSpec", "DataSpec", "Recipe",
           "SpecError", "SweepSpec", "TrainSpec", "Variant", "load_sweep"]
