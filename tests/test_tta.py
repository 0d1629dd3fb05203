"""Flip test-time augmentation as a variant axis: the function it computes, its id, parent, YAML and export."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import get_model
from runner import optimize, pairs
from variants import SpecError, Variant, load_sweep


def _model():
    torch.manual_seed(0)
    return get_model("fastnet_cifar", widths=(8, 16, 16), stem="conv3x3", stem_width=8).eval()


def test_flip_tta_averages_the_image_and_its_mirror():
    m = _model()
    tta = optimize.with_tta(m, "flip")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tta(x), (m(x) + m(x.flip(3))) / 2, atol=1e-6)
        assert torch.allclose(tta(x), tta(x.flip(3)), atol=1e-6)   # a mirrored image gets the same answer
        assert (m(x) - m(x.flip(3))).abs().max() > 1e-5            # ... which the plain model does not give
    assert optimize.with_tta(m, "none") is m
    with pytest.raises(optimize.Unsupported, match="unknown tta"):
        optimize.with_tta(m, "mirror")


def test_prepared_tta_variant_runs_folded_at_batch_one():
    m = _model()
    v = Variant("m", bn_fold=True, tta="flip")
    assert v.variant_id == "m-fp32-nchw-eager-fold-tta"
    p = optimize.prepare(m, v, torch.device("cpu"))
    assert p.folded_layers > 0
    fn, x, _ = p.callable_for(1)
    with torch.no_grad():
        ref = optimize.with_tta(m, "flip")(x)
        assert fn(x).shape == (1, 10) and torch.allclose(fn(x), ref, atol=1e-4)


def test_tta_is_the_last_optimisation_stacked():
    v = Variant("m", precision="fp16", cuda_graph=True, tta="flip")
    parent, axis = pairs.parent_of(v)
    assert axis == "tta" and parent.variant_id == "m-fp16-nchw-eager-graph"


def test_yaml_tta_axis(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("models: {m: {arch: airbench_cifar}}\ngrid: [{tta: [none, flip]}]\n")
    assert [v.variant_id for v in load_sweep(cfg).variants] == ["m-fp32-nchw-eager", "m-fp32-nchw-eager-tta"]
    cfg.write_text("models: {m: {arch: airbench_cifar}}\ngrid: [{tta: [mirror]}]\n")
    with pytest.raises(SpecError, match=r"grid\[0\]\.tta"):
        load_sweep(cfg)


def test_export_keeps_the_variants_tta():
    from runner.export import eval_model
    ckpt = {"arch": "fastnet_cifar", "arch_args": {"widths": (8, 16, 16), "stem": "conv3x3", "stem_width": 8},
            "state_dict": _model().state_dict()}
    exported = eval_model(ckpt, fold=True, tta="flip")
    assert isinstance(exported, optimize.FlipTTA)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in exported.modules())
