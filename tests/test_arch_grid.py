"""Architecture as a sweep axis (variants/families.py, via variants/loader.py): arch_args bound at load, arch_grid families, their
keys and errors; the latency-first sweep file; a whitening-stem model through runner/train.py."""
from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from models import get_model
from models.fastnet import init_whitening
from runner.data import normalizer, synthetic
from runner.train import model_from_checkpoint, train
from variants import Recipe, SpecError, TrainSpec, load_sweep

ROOT = Path(__file__).resolve().parent.parent
LATENCY_FIRST = ROOT / "variants" / "latency-first.yaml"
SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]+$")

FAMILY = """
models:
  ref: {arch: airbench_cifar, recipe: {epochs: 3}}
  fast:
    arch: fastnet_cifar
    arch_args: {stem: whiten2x2, act: gelu}
    arch_grid:
      widths: [[64, 128, 256], [32, 64, 128]]
      convs_per_block: [[1, 1, 1], [2, 2, 2]]
    recipe: {epochs: 5}
"""


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(textwrap.dedent(body))
    return p


def _spec_error(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    return msg


def test_family_expands_one_model_per_combination(tmp_path):
    spec = load_sweep(_write(tmp_path, FAMILY + "grid: [{precision: [fp32, fp16]}]\n"))
    keys = [m.key for m in spec.models]
    assert keys == ["ref", "fast-w64.128.256-cpb1.1.1", "fast-w64.128.256-cpb2.2.2",
                    "fast-w32.64.128-cpb1.1.1", "fast-w32.64.128-cpb2.2.2"]
    m = spec.model("fast-w32.64.128-cpb2.2.2")
    # Lists became tuples; arch_args merged under the grid values; the recipe is shared.
    assert dict(m.arch_args) == {"act": "gelu", "stem": "whiten2x2", "widths": (32, 64, 128),
                                 "convs_per_block": (2, 2, 2)}
    assert m.recipe.epochs == 5 and m.arch == "fastnet_cifar"
    hash(m)  # frozen and hashable
    assert len({x.spec_hash for x in spec.models}) == 5
    assert len(spec.variants) == 10
    model = get_model(m.arch, **dict(m.arch_args))
    assert sum(isinstance(x, nn.Conv2d) for x in model.modules()) == 7


def test_family_key_selects_its_members_in_grid_and_exclude(tmp_path):
    spec = load_sweep(_write(tmp_path, FAMILY + textwrap.dedent("""
    grid:
      - models: [fast]
        precision: [fp32, fp16]
      - models: [ref, fast-w64.128.256-cpb1.1.1]
        compile: [default]
    exclude: [{models: fast, precision: fp16}]
    """)))
    ids = [v.variant_id for v in spec.variants]
    assert ids == ["ref-fp32-nchw-inductor",
                   "fast-w64.128.256-cpb1.1.1-fp32-nchw-eager", "fast-w64.128.256-cpb1.1.1-fp32-nchw-inductor",
                   "fast-w64.128.256-cpb2.2.2-fp32-nchw-eager",
                   "fast-w32.64.128-cpb1.1.1-fp32-nchw-eager", "fast-w32.64.128-cpb2.2.2-fp32-nchw-eager"]


def test_keys_are_stable_safe_and_format_each_kind_of_value(tmp_path):
    p = _write(tmp_path, """
    models:
      f:
        arch: fastnet_cifar
        arch_args: {widths: [8, 8, 8]}
        arch_grid:
          act: [relu, silu]
          logit_scale: [0.5, 0.125]
          pooled: [[true, true, false]]
          stem_width: [24]
    grid: [{}]
    """)
    a, b = load_sweep(p), load_sweep(p)
    keys = [m.key for m in a.models]
    assert keys == [m.key for m in b.models]
    assert [m.spec_hash for m in a.models] == [m.spec_hash for m in b.models]
    assert keys == ["f-relu-ls0.5-p1.1.0-sw24", "f-relu-ls0.125-p1.1.0-sw24",
                    "f-silu-ls0.5-p1.1.0-sw24", "f-silu-ls0.125-p1.1.0-sw24"]
    assert all(SAFE_KEY.match(k) for k in keys)


def test_plain_models_are_unchanged_by_a_family_next_to_them(tmp_path):
    plain = load_sweep(_write(tmp_path, "models:\n  ref: {arch: airbench_cifar, recipe: {epochs: 3}}\ngrid: [{}]\n"))
    mixed = load_sweep(_write(tmp_path, FAMILY + "grid: [{}]\n"))
    assert plain.model("ref") == mixed.model("ref")
    assert plain.model("ref").spec_hash == mixed.model("ref").spec_hash
    assert plain.model("ref").arch_args == ()


@pytest.mark.parametrize("body, where, why", [
    ("arch_args: {widthz: [8]}", "models.f.arch_args.widthz", "unknown argument of fastnet_cifar; allowed: widths"),
    ("arch_grid: {widthz: [[8]]}", "models.f.arch_grid.widthz", "unknown argument of fastnet_cifar"),
    ("arch_args: {num_classes: 5}", "models.f.arch_args.num_classes", "set by the runner"),
    ("arch_grid: {widths: [8, 8]}", "models.f.arch_grid (f-w8)", "widths must be a non-empty list"),
    ("arch_grid: {widths: [[8, 0, 8]]}", "models.f.arch_grid (f-w8.0.8)", "widths must be"),
    ("arch_grid: {act: []}", "models.f.arch_grid.act", "expected a non-empty list of values"),
    ("arch_grid: {act: relu}", "models.f.arch_grid.act", "expected a non-empty list of values"),
    ("arch_args: {act: relu}\n        arch_grid: {act: [gelu]}", "models.f.arch_grid.act", "also set in arch_args"),
    ("arch_args: {act: tanh}", "models.f.arch_args", "act 'tanh' is not one of"),
    ("arch_args: {widths: {a: 1}}", "models.f.arch_args.widths", "expected a value or a list, got a mapping"),
    ("arch_grid: {logit_scale: [0.1111111, 0.11111111]}", "models.f.arch_grid",
     "two combinations give the same model key 'f-ls0.111111'"),
    ("arch_grid: [widths]", "models.f.arch_grid", "expected a mapping"),
])
def test_wrong_arch_arguments_fail_at_load_naming_the_key_path(tmp_path, body, where, why):
    msg = _spec_error(_write(tmp_path, f"""
    models:
      f:
        arch: fastnet_cifar
        {body}
    """))
    assert f": {where}: " in msg and why in msg, msg


def test_builders_taking_kwargs_are_checked_by_building(tmp_path):
    # airbench_cifar(**kw) accepts any name in its signature; building it (on the meta device) rejects it.
    msg = _spec_error(_write(tmp_path, "models:\n  a: {arch: airbench_cifar, arch_args: {depth: 3}}\n"))
    assert "models.a.arch_args: airbench_cifar rejects these arguments" in msg and "depth" in msg


def test_member_key_clashing_with_another_model_fails(tmp_path):
    msg = _spec_error(_write(tmp_path, """
    models:
      f-w8.8.8: {arch: fastnet_cifar}
      f: {arch: fastnet_cifar, arch_grid: {widths: [[8, 8, 8]]}}
    """))
    assert "models.f: model key 'f-w8.8.8' is declared twice" in msg


def test_family_key_is_not_a_teacher_or_named_model(tmp_path):
    msg = _spec_error(_write(tmp_path, FAMILY + "  kd: {arch: fastnet_cifar, teacher: fast}\n"))
    assert "models.kd.teacher: 'fast' is not one of" in msg
    msg = _spec_error(_write(tmp_path, FAMILY + "named: {X: {model: fast}}\n"))
    assert "named.X.model: 'fast' is not one of" in msg


def test_latency_first_file():
    spec = load_sweep(LATENCY_FIRST)
    assert [v.variant_id for v in spec.variants] == [v.variant_id for v in load_sweep(LATENCY_FIRST).variants]
    keys = [m.key for m in spec.models]
    assert {"resnet18", "airbench"} <= set(keys) and all(SAFE_KEY.match(k) for k in keys)
    assert len(spec.variants) <= 30 and len({v.variant_id for v in spec.variants}) == len(spec.variants)
    family = [v for v in spec.variants if v.brief_id != "B2"]
    for v in family:
        assert (v.precision, v.memory_format, v.cuda_graph) == ("fp16", "channels_last", True)
        assert v.bn_fold or v.model == "airbench"  # airbench also unfolded: a paired decision on folding
    for m in spec.models:  # every model is measured both ways
        assert {v.compile for v in family if v.model == m.key} == {"none", "default"}
    tta = [v for v in family if v.tta == "flip"]  # flip TTA only compiled + graphed, each with its parent
    assert tta and all(v.compile == "default" for v in tta)
    ids = {v.variant_id for v in spec.variants}
    assert all(v.variant_id.removesuffix("-tta") in ids for v in tta)
    b2 = next(v for v in spec.variants if v.brief_id == "B2")
    assert (b2.model, b2.precision, b2.cuda_graph) == ("resnet18", "fp32", False)
    convs = [sum(isinstance(x, nn.Conv2d) for x in get_model(m.arch, **dict(m.arch_args)).modules())
             for m in spec.models if m.arch == "fastnet_cifar"]
    assert min(convs) == 4 and max(convs) == 7
    assert {m.teacher for m in spec.models if m.key.startswith("fast_kd")} == {"resnet18"}


@pytest.fixture(scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_initialises_and_keeps_the_whitening_stem(_one_thread):
    data = synthetic(n_train=256, n_test=64)
    args = (("convs_per_block", (1, 1)), ("widths", (8, 16)))
    spec = TrainSpec(key="w", arch="fastnet_cifar", arch_args=args,
                     recipe=Recipe(epochs=1, batch_size=64, lr=0.05))
    ckpt = train(spec, data, torch.device("cpu"), log=lambda _: None)
    expected = get_model("fastnet_cifar", widths=(8, 16), convs_per_block=(1, 1))
    init_whitening(expected, normalizer(torch.device("cpu"))(torch.from_numpy(data.train_x)))
    torch.testing.assert_close(ckpt["state_dict"]["stem.0.weight"], expected.stem[0].weight)
    assert not torch.equal(ckpt["state_dict"]["stem.0.bias"], expected.stem[0].bias)  # the bias trains
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    model = model_from_checkpoint(torch.load(buf, weights_only=True), torch.device("cpu"))
    assert [b.out_channels for b in model.blocks.modules() if isinstance(b, nn.Conv2d)] == [8, 16]
