"""The inference axes of a variant, each defined once: name, allowed values, default, id token per value.

    python -m runner list --config variants/default.yaml     # the id column is built from these tokens

`TABLE` is in the order in which optimisations stack: a variant's parent is the same variant with its last
applied axis reset to that axis's default (runner/pairs.py, the report's decisions). The default of each
axis means "not applied". The loader, `Variant`, `optimize` and the report read this table; the names below
it (`AXES`, `PRECISIONS`, ...) are derived views kept because code and tests import them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Axis:
    name: str                          # the Variant field and the YAML key (grid, exclude, named)
    default: Any                       # the value that means "this optimisation is not applied"
    tokens: Mapping[Any, str | None]   # allowed value -> its part of the variant id (None: left out)

    @property
    def values(self) -> tuple:
        return tuple(self.tokens)


# Ids read like the variant (resnet18-fp16-cl-ro-graph-fold); the tokens are part of every result file name
# and of the ids in published reports, so changing one renames results.
TABLE: tuple[Axis, ...] = (
    Axis("precision", "fp32", {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "amp_fp16": "amp_fp16"}),
    Axis("memory_format", "contiguous", {"contiguous": "nchw", "channels_last": "cl"}),
    Axis("compile", "none", {"none": "eager", "default": "inductor", "reduce-overhead": "ro",
                             "max-autotune": "ma", "max-autotune-no-cudagraphs": "manocg",
                             "fused": "fused"}),  # runner/fused.py: own Triton kernels, folded fp16 nets
    Axis("cuda_graph", False, {False: None, True: "graph"}),
    Axis("bn_fold", False, {False: None, True: "fold"}),
    # Test-time augmentation: the image and its mirror as one batch of 2 in the same call (and graph), logits
    # averaged. Measured on an H200: a second image costs a compiled + graphed small net 1-5 us.
    Axis("tta", "none", {"none": None, "flip": "tta"}),
)
BY_NAME: dict[str, Axis] = {a.name: a for a in TABLE}

# Derived views (imported by runner/ and the tests).
AXES: tuple[str, ...] = tuple(a.name for a in TABLE)
OPTIMISATION_ORDER: tuple[tuple[str, Any], ...] = tuple((a.name, a.default) for a in TABLE)
PRECISIONS = BY_NAME["precision"].values
MEMORY_FORMATS = BY_NAME["memory_format"].values
COMPILE_MODES = BY_NAME["compile"].values


def id_parts(axis_values: Mapping[str, Any]) -> list[str]:
    """The id tokens of one variant's axis values, in table order; an axis whose token is None adds none."""
    parts = [BY_NAME[name].tokens[value] for name, value in axis_values.items()]
    return [p for p in parts if p is not None]


def norm(value: Any) -> Any:
    """YAML spells booleans as on/off/true/false; accept the axis names users write."""
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return value.lower() == "on"
    return value
