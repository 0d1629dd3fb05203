"""models/fastnet.py on the CPU: forward over several architectures, argument checks, BN folding, the
whitening stem, and inductor + fold on the CPU."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

from models import get_model
from models.fastnet import has_whitening_stem, init_whitening
from runner.data import normalizer, synthetic
from runner.optimize import fold_batchnorm, prepare
from variants import Variant

CPU = torch.device("cpu")

ARCHS = [
    {},
    dict(widths=(32, 64, 128), convs_per_block=(2, 2, 2)),
    dict(widths=(16, 32), convs_per_block=(1, 3), stem="conv3x3", stem_width=16, act="relu"),
    dict(widths=(16, 32, 32, 64), convs_per_block=(1, 1, 1, 1), stem="whiten3x3", stem_width=54, pool="avg"),
    dict(widths=[16, 32, 64], convs_per_block=[1, 1, 1], pooled=[True, False, True], kernel_size=5, act="silu"),
]


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as after training (fresh BN is identity-like)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def _n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("kw", ARCHS, ids=str)
def test_forward_shapes_and_conv_count(kw):
    torch.manual_seed(0)
    model = get_model("fastnet_cifar", **kw)
    y = model(torch.randn(3, 3, 32, 32))
    assert y.shape == (3, 10) and torch.isfinite(y).all()
    cpb = kw.get("convs_per_block", (1, 1, 1))
    assert _n_convs(model) == 1 + sum(cpb)  # the stem + every block's convolutions
    assert get_model("fastnet_cifar", num_classes=7, **kw).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_widths_set_the_channels():
    model = get_model("fastnet_cifar", widths=(8, 16, 40), convs_per_block=(1, 2, 1))
    outs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert outs == [24, 8, 16, 16, 40]
    assert model.fc.in_features == 40


def test_pooling_placement_changes_the_resolution():
    seen = []
    model = get_model("fastnet_cifar", widths=(8, 8, 8), pooled=(True, False, False)).eval()
    model.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    model(torch.randn(1, 3, 32, 32))
    assert seen == [15]  # 2x2 stem: 31, one pool: 15
    model = get_model("fastnet_cifar", widths=(8, 8, 8)).eval()
    model.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    model(torch.randn(1, 3, 32, 32))
    assert seen[-1] == 3  # 31 -> 15 -> 7 -> 3


@pytest.mark.parametrize("kw, message", [
    (dict(widths=()), "widths must be a non-empty list"),
    (dict(widths=(64, 0, 128)), "widths must be a non-empty list of positive integers"),
    (dict(widths=64), "widths must be"),
    (dict(widths=(64, 128), convs_per_block=(1, 1, 1)), "convs_per_block has 3 entries but widths has 2"),
    (dict(convs_per_block=(1, 0, 1)), "convs_per_block must be"),
    (dict(act="tanh"), "act 'tanh' is not one of gelu, relu, silu"),
    (dict(stem="patch4x4"), "stem 'patch4x4' is not one of"),
    (dict(pool="min"), "pool 'min' is not one of avg, max"),
    (dict(kernel_size=4), "kernel_size must be an odd positive integer"),
    (dict(stem_width=0, stem="conv3x3"), "stem_width must be a positive integer"),
    (dict(stem_width=26), "stem whiten2x2 needs an even stem_width <= 24"),
    (dict(stem_width=23), "even stem_width"),
    (dict(logit_scale=0.0), "logit_scale must be positive"),
    (dict(pooled=(True, True)), "pooled must be one true/false per block (3)"),
    (dict(widths=(8,) * 6, convs_per_block=(1,) * 6), "6 pooled blocks shrink a 32x32 input below 1x1"),
])
def test_bad_arguments_fail_with_a_clear_message(kw, message):
    with pytest.raises(ValueError, match=None) as e:
        get_model("fastnet_cifar", **kw)
    assert message in str(e.value)


def test_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError, match="widthz"):
        get_model("fastnet_cifar", widthz=(64,))


@pytest.mark.parametrize("kw", ARCHS, ids=str)
def test_bn_folding_keeps_logits_and_removes_every_bn(kw):
    torch.manual_seed(0)
    model = _randomise_bn(get_model("fastnet_cifar", **kw)).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # Every BN sits right after a conv (the stem has none when it is a whitening stem).
    assert n_bn == _n_convs(model) - (1 if has_whitening_stem(model) else 0)
    folded, n = fold_batchnorm(model)
    assert n == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert ref.abs().max() > 1e-3  # logits that are not ~0, so the comparison means something
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_airbench_order_would_not_fold():
    # Why the family uses conv -> BN -> act -> pool: with airbench's conv -> pool -> BN, fx finds no pair.
    model = get_model("airbench_cifar", width_mult=0.25)
    _, n = fold_batchnorm(model)
    assert n == 3  # only each block's second BN; the three after a pool stay
    _, n = fold_batchnorm(get_model("fastnet_cifar", convs_per_block=(2, 2, 2)))
    assert n == 6


@pytest.mark.parametrize("stem, width", [("whiten2x2", 24), ("whiten3x3", 54), ("whiten2x2", 8)])
def test_whitening_stem_whitens_training_patches(stem, width):
    data = synthetic(n_train=256)
    model = get_model("fastnet_cifar", stem=stem, stem_width=width)
    init_whitening(model, normalizer(CPU)(torch.from_numpy(data.train_x)), eps=1e-9)
    conv = model.stem[0]
    assert not conv.weight.requires_grad and conv.bias.requires_grad
    with torch.no_grad():
        y = conv(normalizer(CPU)(torch.from_numpy(data.train_x))).double()
    half = width // 2
    z = y[:, :half].permute(1, 0, 2, 3).reshape(half, -1)
    assert z.mean(1).abs().max() < 1e-4
    torch.testing.assert_close(torch.cov(z), torch.eye(half, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(y[:, half:], -y[:, :half])  # the +/- pair


def test_init_whitening_refuses_other_models():
    with pytest.raises(ValueError, match="whiten"):
        init_whitening(get_model("fastnet_cifar", stem="conv3x3"), synthetic(n_train=16).train_x)
    with pytest.raises(ValueError, match="whiten"):
        init_whitening(get_model("airbench_cifar"), synthetic(n_train=16).train_x)


def test_init_whitening_takes_normalised_images_only():
    """models/ does not normalise (that is runner.data's job): raw uint8 pixels are refused, not whitened wrong."""
    with pytest.raises(TypeError, match="normalised"):
        init_whitening(get_model("fastnet_cifar", stem="whiten2x2"), torch.from_numpy(synthetic(n_train=16).train_x))


@pytest.mark.skipif(os.environ.get("SKIP_COMPILE_TESTS") == "1", reason="SKIP_COMPILE_TESTS=1")
def test_inductor_default_on_cpu_matches_eager_after_folding():
    # The latency-first path is compile `default` + BN fold (+ a CUDA graph on the GPU). On the CPU the
    # graph is refused, but inductor itself runs: its output must match the folded eager model.
    torch.manual_seed(0)
    model = _randomise_bn(get_model("fastnet_cifar", widths=(16, 32, 32))).eval()
    eager = prepare(model, Variant("m", bn_fold=True), CPU)
    compiled = prepare(model, Variant("m", bn_fold=True, compile="default"), CPU)
    fn, x, _ = compiled.callable_for(2, warm_calls=1)
    with torch.inference_mode():
        torch.testing.assert_close(fn(x), eager.forward(x), atol=1e-4, rtol=1e-4)
