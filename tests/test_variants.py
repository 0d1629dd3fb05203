"""variants/ (loader, axes, spec): the shipped sweep files, deterministic expansion, and every validation error."""
from __future__ import annotations

import dataclasses
import itertools
import json
import textwrap
from pathlib import Path

import pytest

from models import list_models
from variants import AXES, Recipe, SpecError, Variant, axes, load_sweep

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "variants" / "default.yaml"
QUICK = ROOT / "variants" / "quick.yaml"

MODELS = """
models:
  resnet18: {arch: resnet18_cifar, recipe: {epochs: 3}}
  mobilenet: {arch: mobilenet_v3_small_cifar}
"""


def _write(tmp_path: Path, body: str, name: str = "sweep.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def _sweep(tmp_path: Path, extra: str, name: str = "sweep.yaml") -> Path:
    """MODELS plus an indented block (dedented on its own)."""
    return _write(tmp_path, MODELS + textwrap.dedent(extra), name)


def _spec_error(path: Path, **kw) -> str:
    with pytest.raises(SpecError) as info:
        load_sweep(path, **kw)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


# ---- the shipped files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [DEFAULT, QUICK], ids=["default", "quick"])
def test_shipped_files_load_with_stable_unique_ids(path):
    a, b = load_sweep(path), load_sweep(path)
    ids = [v.variant_id for v in a.variants]
    assert ids == [v.variant_id for v in b.variants]
    assert len(ids) == len(set(ids))
    assert a == b
    assert [m.spec_hash for m in a.models] == [m.spec_hash for m in b.models]
    assert a.source_file == str(path)
    json.dumps(a.to_dict())  # the resolved config is written as JSON next to the results
    # Variants are grouped by model in declaration order, sorted by id within a model.
    order = [m.key for m in a.models]
    keys = [(order.index(v.model), v.variant_id) for v in a.variants]
    assert keys == sorted(keys)
    brief = [v.brief_id for v in a.variants if v.brief_id]
    assert sorted(brief) == ["B1", "B2", "D1", "O1", "O2", "O3"]


def test_default_named_rows_have_the_briefs_axes():
    spec = load_sweep(DEFAULT)
    assert spec.name == "default"
    named = {v.brief_id: v for v in spec.variants if v.brief_id}
    expect = {
        "B1": Variant("mobilenet", "fp32", "contiguous", "none", False, False),
        "B2": Variant("resnet18", "fp32", "contiguous", "none", False, False),
        "O1": Variant("mobilenet", "fp16", "contiguous", "none", False, False),
        "O2": Variant("mobilenet", "fp16", "contiguous", "default", False, False),
        "O3": Variant("mobilenet", "fp32", "channels_last", "none", False, False),
        "D1": Variant("mobilenet_kd", "fp16", "contiguous", "none", False, False),
    }
    assert set(named) == set(expect)
    for bid, want in expect.items():
        got = named[bid]
        assert (got.model, got.axes()) == (want.model, want.axes()), bid
        assert got.label
    assert named["O2"].variant_id == "mobilenet-fp16-nchw-inductor"
    assert named["B1"].variant_id == "mobilenet-fp32-nchw-eager"
    kd = spec.model("mobilenet_kd")
    assert kd.teacher == "resnet18" and kd.arch == "mobilenet_v3_small_cifar"
    assert kd.recipe.distill_alpha == 0.9 and kd.recipe.distill_temperature == 4.0
    assert spec.model("resnet18").teacher is None
    r18 = spec.model("resnet18").recipe
    assert (r18.epochs, r18.batch_size, r18.cutout, r18.label_smoothing) == (60, 1024, 16, 0.0)
    assert all(m.recipe.deterministic for m in spec.models)  # shipped recipes are reproducible


def test_default_grid_size():
    spec = load_sweep(DEFAULT)
    # 5 models x 2 precisions x 2 formats x 2 graph = 40, + 5 folded, + 2 reduce-overhead, + O2 (compile default)
    assert len(spec.models) == 5
    assert len(spec.variants) == 48
    assert sum(v.bn_fold for v in spec.variants) == 5
    ro = sorted(v.model for v in spec.variants if v.compile == "reduce-overhead")
    assert ro == ["airbench", "resnet18"]
    assert [v.variant_id for v in spec.variants if v.compile == "default"] == ["mobilenet-fp16-nchw-inductor"]
    # YAML `off`/`on` in the grid became real booleans on both sides
    assert {v.cuda_graph for v in spec.variants} == {False, True}
    assert all(type(v.cuda_graph) is bool and type(v.bn_fold) is bool for v in spec.variants)


def test_quick_grid():
    spec = load_sweep(QUICK)
    ids = {v.variant_id for v in spec.variants}
    assert {"mobilenet-fp32-nchw-eager", "mobilenet-fp32-cl-eager", "mobilenet-fp32-nchw-eager-fold"} <= ids
    assert not any("-bf16-" in i for i in ids)  # ~100 ms a call on a 2-core CPU: not in the quick start
    assert {v.model for v in spec.variants} == {m.key for m in spec.models}
    assert spec.bench.iters == 50 and spec.bench.cv_flag_pct == 10.0 and spec.bench.processes == 1
    assert spec.bench.cpu_threads == 1  # single-thread CPU timings; the GPU sweeps leave it at 0 (unused there)
    assert load_sweep(DEFAULT).bench.cpu_threads == 0
    assert spec.model("mobilenet").recipe.train_subset == 1024


# ---- expansion -----------------------------------------------------------------------------------------

def test_grid_models_restricts_and_exclusions_remove(tmp_path):
    p = _sweep(tmp_path, """
    grid:
      - models: [mobilenet]
        precision: [fp32, bf16]
        memory_format: [contiguous, channels_last]
    exclude:
      - {precision: bf16, memory_format: channels_last}
    """)
    spec = load_sweep(p)
    assert [v.variant_id for v in spec.variants] == [
        "mobilenet-bf16-nchw-eager", "mobilenet-fp32-cl-eager", "mobilenet-fp32-nchw-eager"]
    # without the exclusion the fourth point is there
    p2 = _sweep(tmp_path, """
    grid:
      - models: [mobilenet]
        precision: [fp32, bf16]
        memory_format: [contiguous, channels_last]
    """, "noexcl.yaml")
    assert "mobilenet-bf16-cl-eager" in {v.variant_id for v in load_sweep(p2).variants}


def test_grid_without_models_covers_every_model_and_exclude_by_model(tmp_path):
    p = _sweep(tmp_path, """
    grid:
      - precision: [fp32, bf16]
    exclude:
      - {models: [resnet18], precision: bf16}
    """)
    ids = [v.variant_id for v in load_sweep(p).variants]
    assert ids == ["resnet18-fp32-nchw-eager", "mobilenet-bf16-nchw-eager", "mobilenet-fp32-nchw-eager"]


@pytest.mark.parametrize("on, off", [("on", "off"), ("'on'", "'off'"), ("true", "false"), ("'ON'", "'Off'")])
def test_cuda_graph_yaml_booleans(tmp_path, on, off):
    p = _sweep(tmp_path, f"""
    grid:
      - models: [mobilenet]
        cuda_graph: [{off}, {on}]
        bn_fold: {on}
    """)
    vs = load_sweep(p).variants
    assert [(v.cuda_graph, v.bn_fold) for v in vs] == [(False, True), (True, True)]
    assert all(type(v.cuda_graph) is bool for v in vs)
    assert [v.variant_id for v in vs] == ["mobilenet-fp32-nchw-eager-fold", "mobilenet-fp32-nchw-eager-graph-fold"]


def test_named_row_labels_grid_point_or_adds_one(tmp_path):
    p = _sweep(tmp_path, """
    grid:
      - models: [mobilenet]
    named:
      B1: {model: mobilenet, label: "base"}
      X9: {model: resnet18, precision: bf16, cuda_graph: 'on'}
    """)
    vs = {v.variant_id: v for v in load_sweep(p).variants}
    assert set(vs) == {"mobilenet-fp32-nchw-eager", "resnet18-bf16-nchw-eager-graph"}
    assert (vs["mobilenet-fp32-nchw-eager"].brief_id, vs["mobilenet-fp32-nchw-eager"].label) == ("B1", "base")
    assert vs["resnet18-bf16-nchw-eager-graph"].brief_id == "X9"


def test_two_named_rows_for_one_variant_fail(tmp_path):
    p = _sweep(tmp_path, """
    named:
      B1: {model: mobilenet}
      B9: {model: mobilenet, precision: fp32}
    """)
    msg = _spec_error(p)
    assert "named.B9" in msg and "named.B1" in msg


def test_overrides_patch_every_recipe(tmp_path):
    p = _sweep(tmp_path, "grid: [{precision: fp32}]\n")
    base = load_sweep(p)
    spec = load_sweep(p, overrides={"epochs": 2, "lr": 0.05})
    for m, m0 in zip(spec.models, base.models):
        assert m.recipe.epochs == 2 and m.recipe.lr == 0.05
        assert m.recipe.batch_size == m0.recipe.batch_size
        assert m.spec_hash != m0.spec_hash  # a changed recipe is a different trained model
    assert base.model("resnet18").recipe.epochs == 3
    assert base.model("mobilenet").recipe == Recipe()
    msg = _spec_error(p, overrides={"epoch": 2})
    assert "models.resnet18.recipe.epoch" in msg and "epochs" in msg


def test_arch_args_and_seed(tmp_path):
    p = _write(tmp_path, """
    seed: 7
    models:
      tiny: {arch: airbench_cifar, arch_args: {width_mult: 0.25}}
    grid: [{}]
    """)
    spec = load_sweep(p)
    assert spec.seed == 7 and spec.name == "sweep"
    assert spec.model("tiny").arch_args == (("width_mult", 0.25),)
    assert spec.model("tiny").seed == 7
    assert [v.variant_id for v in spec.variants] == ["tiny-fp32-nchw-eager"]


@pytest.mark.parametrize("text, bar", [("", 85.0), ("accuracy_bar_pct: 90\n", 90.0), ("accuracy_bar_pct: 92.5\n", 92.5)])
def test_the_accuracy_bar_comes_from_the_sweep_file(tmp_path, text, bar):
    assert load_sweep(_sweep(tmp_path, text + "grid: [{}]\n")).accuracy_bar_pct == bar


@pytest.mark.parametrize("value, words", [("0", "out of range"), ("101", "out of range"), (".nan", "out of range"),
                                          ("'85'", "expected a number, got str"), ("true", "expected a number")])
def test_a_bad_accuracy_bar_names_the_key(tmp_path, value, words):
    msg = _spec_error(_sweep(tmp_path, f"accuracy_bar_pct: {value}\n"))
    assert "accuracy_bar_pct" in msg and words in msg


# ---- errors --------------------------------------------------------------------------------------------

def test_unknown_top_level_key(tmp_path):
    p = _sweep(tmp_path, "grids: []\n")
    msg = _spec_error(p)
    assert "grids: unknown key" in msg
    assert "allowed keys: accuracy_bar_pct, bench, data, exclude, grid, models, named, seed, sweep" in msg


def test_misspelled_recipe_key(tmp_path):
    p = _write(tmp_path, """
    models:
      resnet18: {arch: resnet18_cifar, recipe: {epoch: 3}}
    grid: [{}]
    """)
    msg = _spec_error(p)
    assert "models.resnet18.recipe.epoch" in msg
    assert "allowed keys:" in msg
    allowed = msg.split("allowed keys:")[1]
    for f in ("epochs", "batch_size", "lr", "distill_alpha"):
        assert f in allowed


@pytest.mark.parametrize("where, body", [
    ("models.m", "models:\n  m: {arch: resnet18_cifar, recipie: {}}\ngrid: [{}]\n"),
    ("bench.iter", "models:\n  m: {arch: resnet18_cifar}\nbench: {iter: 5}\ngrid: [{}]\n"),
    ("grid[0].precisions", "models:\n  m: {arch: resnet18_cifar}\ngrid: [{precisions: [fp32]}]\n"),
    ("exclude[0].cudagraph", "models:\n  m: {arch: resnet18_cifar}\ngrid: [{}]\nexclude: [{cudagraph: on}]\n"),
    ("named.B1.memory", "models:\n  m: {arch: resnet18_cifar}\nnamed: {B1: {model: m, memory: cl}}\n"),
])
def test_unknown_keys_everywhere_name_the_path(tmp_path, where, body):
    msg = _spec_error(_write(tmp_path, body))
    assert f"{where}" in msg and "unknown key; allowed keys:" in msg


@pytest.mark.parametrize("where, body", [
    ("grid[0].precision", MODELS + "grid: [{precision: [fp32, fp64]}]\n"),
    ("named.B1.precision", MODELS + "named: {B1: {model: mobilenet, precision: fp64}}\n"),
    ("exclude[0].precision", MODELS + "grid: [{}]\nexclude: [{precision: fp64}]\n"),
])
def test_unknown_axis_value(tmp_path, where, body):
    msg = _spec_error(_write(tmp_path, body))
    assert where in msg and "'fp64'" in msg
    assert "fp32, fp16, bf16, amp_fp16" in msg


def test_unknown_memory_format_and_compile(tmp_path):
    msg = _spec_error(_sweep(tmp_path, "grid: [{memory_format: nhwc}]\n"))
    assert "grid[0].memory_format" in msg and "channels_last" in msg
    msg = _spec_error(_sweep(tmp_path, "grid: [{compile: turbo}]\n", "c.yaml"))
    assert "grid[0].compile" in msg and "reduce-overhead" in msg


def test_unknown_model_in_grid_and_named(tmp_path):
    msg = _spec_error(_sweep(tmp_path, "grid: [{models: [vgg]}]\n"))
    assert "grid[0].models" in msg and "'vgg'" in msg and "resnet18, mobilenet" in msg
    msg = _spec_error(_sweep(tmp_path, "named: {B1: {model: vgg}}\n", "n.yaml"))
    assert "named.B1.model" in msg and "'vgg'" in msg


def test_unknown_arch(tmp_path):
    msg = _spec_error(_write(tmp_path, "models:\n  m: {arch: resnet50}\ngrid: [{}]\n"))
    assert "models.m.arch" in msg and "'resnet50'" in msg
    for name in list_models():
        assert name in msg


def test_missing_arch(tmp_path):
    msg = _spec_error(_write(tmp_path, "models:\n  m: {recipe: {epochs: 1}}\ngrid: [{}]\n"))
    assert "models.m" in msg and "missing required key 'arch'" in msg


def test_unknown_teacher(tmp_path):
    p = _sweep(tmp_path, "  kd: {arch: mobilenet_v3_small_cifar, teacher: resnet34}\ngrid: [{}]\n")
    msg = _spec_error(p)
    assert "models.kd.teacher" in msg and "'resnet34'" in msg and "resnet18, mobilenet" in msg


def test_self_teacher(tmp_path):
    p = _sweep(tmp_path, "  kd: {arch: mobilenet_v3_small_cifar, teacher: kd}\ngrid: [{}]\n")
    assert "models.kd.teacher" in _spec_error(p)


def test_teacher_chain(tmp_path):
    p = _sweep(tmp_path, """
      kd: {arch: mobilenet_v3_small_cifar, teacher: resnet18}
      kd2: {arch: mobilenet_v3_small_cifar, teacher: kd}
    grid: [{}]
    """)
    msg = _spec_error(p)
    assert "models.kd2.teacher" in msg and "one level only" in msg


@pytest.mark.parametrize("field, value, kind", [
    ("epochs", '"ten"', "int"), ("epochs", "2.5", "int"), ("nesterov", "1", "bool"),
    ("lr", "fast", "float"), ("amp", "16", "str"), ("channels_last", "'yes'", "bool"),
])
def test_wrong_recipe_type(tmp_path, field, value, kind):
    p = _write(tmp_path, f"models:\n  m: {{arch: resnet18_cifar, recipe: {{{field}: {value}}}}}\ngrid: [{{}}]\n")
    msg = _spec_error(p)
    assert f"models.m.recipe.{field}" in msg and f"expected {kind}" in msg


@pytest.mark.parametrize("field, value", [
    ("epochs", "0"), ("batch_size", "-8"), ("lr", "0"), ("momentum", "1.0"), ("weight_decay", "-1e-4"),
    ("label_smoothing", "1.5"), ("warmup_frac", "1"), ("distill_alpha", "1.2"), ("distill_temperature", "0"),
])
def test_recipe_value_out_of_range(tmp_path, field, value):
    p = _write(tmp_path, f"models:\n  m: {{arch: resnet18_cifar, recipe: {{{field}: {value}}}}}\ngrid: [{{}}]\n")
    msg = _spec_error(p)
    assert f"models.m.recipe.{field}" in msg and "out of range" in msg


def test_recipe_values_at_the_edges_are_accepted(tmp_path):
    body = ("models:\n  m: {arch: resnet18_cifar, recipe: {epochs: 1, momentum: 0, weight_decay: 0, "
            "label_smoothing: 0, warmup_frac: 0, distill_alpha: 1, deterministic: true}}\ngrid: [{}]\n")
    r = load_sweep(_write(tmp_path, body)).model("m").recipe
    assert r.epochs == 1 and r.distill_alpha == 1.0 and r.deterministic is True


def test_wrong_bench_type_and_seed(tmp_path):
    msg = _spec_error(_sweep(tmp_path, "bench: {repeats: three}\ngrid: [{}]\n"))
    assert "bench.repeats" in msg and "expected int" in msg
    msg = _spec_error(_sweep(tmp_path, "seed: abc\ngrid: [{}]\n", "s.yaml"))
    assert "seed" in msg and "'abc'" in msg


def test_cudnn_autotune_is_a_bench_switch_off_by_default(tmp_path):
    assert load_sweep(_sweep(tmp_path, "grid: [{}]\n")).bench.cudnn_autotune is False
    assert load_sweep(_sweep(tmp_path, "bench: {cudnn_autotune: true}\ngrid: [{}]\n", "on.yaml")).bench.cudnn_autotune is True
    msg = _spec_error(_sweep(tmp_path, "bench: {cudnn_autotune: 'yes'}\ngrid: [{}]\n", "bad.yaml"))
    assert "bench.cudnn_autotune" in msg and "expected bool" in msg


def test_integral_values_are_coerced(tmp_path):
    p = _write(tmp_path, "models:\n  m: {arch: resnet18_cifar, recipe: {epochs: 4.0, lr: 1}}\ngrid: [{}]\n")
    r = load_sweep(p).model("m").recipe
    assert r.epochs == 4 and type(r.epochs) is int
    assert r.lr == 1.0 and type(r.lr) is float


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    msg = _spec_error(p)
    assert "no such sweep file" in msg


def test_invalid_yaml(tmp_path):
    p = _write(tmp_path, "models: {m: [unclosed\n")
    msg = _spec_error(p)
    assert "not valid YAML" in msg


def test_structural_errors(tmp_path):
    assert "missing required key 'models'" in _spec_error(_write(tmp_path, "sweep: x\n"))
    assert "expected a mapping" in _spec_error(_write(tmp_path, "- a\n- b\n", "list.yaml"))
    assert "models: declare at least one model" in _spec_error(_write(tmp_path, "models: {}\n", "empty.yaml"))
    assert "expands to no variant" in _spec_error(
        _sweep(tmp_path, "grid: [{models: [mobilenet]}]\nexclude: [{models: [mobilenet]}]\n", "ex.yaml"))


def test_grid_models_scalar_like_axes(tmp_path):
    p = _sweep(tmp_path, "grid: [{models: mobilenet, precision: bf16}]\n")
    assert [v.variant_id for v in load_sweep(p).variants] == ["mobilenet-bf16-nchw-eager"]


@pytest.mark.parametrize("body", ["models:\n  - {m: {arch: resnet18_cifar}}\n",
                                  MODELS + "named:\n  - {model: mobilenet}\n"])
def test_list_instead_of_mapping_is_a_spec_error(tmp_path, body):
    msg = _spec_error(_write(tmp_path, body))
    assert "expected a mapping, got list" in msg


def test_variant_fields_are_the_axis_table():
    """Positional Variant(...) and every default follow variants/axes.py's TABLE, in its stacking order."""
    fields = dataclasses.fields(Variant)[1:1 + len(axes.TABLE)]
    assert [(f.name, f.default) for f in fields] == [(a.name, a.default) for a in axes.TABLE]
    v = Variant("m", "bf16", "channels_last", "max-autotune", True, True)
    assert tuple(v.axes()) == AXES
    assert v.variant_id == "m-bf16-cl-ma-graph-fold"
    assert Variant("m").variant_id == "m-fp32-nchw-eager"  # each default's token


def test_every_axis_combination_has_its_own_id():
    """Two variants sharing an id would share one results/<id>.parquet: the tokens must never collide."""
    combos = list(itertools.product(*(a.values for a in axes.TABLE)))
    ids = {Variant("m", *combo).variant_id for combo in combos}
    assert len(ids) == len(combos)


def test_capped_shortens_never_lengthens():
    spec = load_sweep("variants/default.yaml")
    short = spec.capped(max_epochs=15, bench_iters=300)
    assert [m.recipe.epochs for m in short.models] == [min(m.recipe.epochs, 15) for m in spec.models]
    assert (short.bench.warmup, short.bench.iters) == (min(spec.bench.warmup, 300), 300)
    assert spec.capped(max_epochs=1000) == spec  # a cap above every value changes nothing
    assert short.models[0].spec_hash != spec.models[0].spec_hash  # a shortened run never resumes a full one


@pytest.mark.parametrize("kw, flag", [({"max_epochs": 0}, "--max-epochs 0"), ({"bench_iters": -5}, "--bench-iters -5")])
def test_caps_must_be_positive(kw, flag):
    with pytest.raises(SpecError) as e:
        load_sweep(DEFAULT).capped(**kw)
    assert flag in str(e.value) and "positive" in str(e.value)
