"""The variant registry: YAML sweep files in this folder and the loader that expands them."""
from variants.loader import (AXES, OPTIMISATION_ORDER, COMPILE_MODES, MEMORY_FORMATS, PRECISIONS, BenchSpec, DataSpec, Recipe,
                             SpecError, SweepSpec, TrainSpec, Variant, load_sweep)

__all__ = ["AXES", "OPTIMISATION_ORDER", "COMPILE_MODES", "MEMORY_FORMATS", "PRECISIONS", "BenchSpec", "DataSpec", "Recipe",
           "SpecError", "SweepSpec", "TrainSpec", "Variant", "load_sweep"]
