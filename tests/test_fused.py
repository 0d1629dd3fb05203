"""compile: fused (runner/fused.py) against the folded fp32 eager model: its Triton kernels compiled and run on
a GPU where there is one, else run by Triton's interpreter on the CPU; and the networks / settings it must
refuse. Kernel timings come from the GPU probe (python -m runner.diagnostics.fused_probe), never from here."""
from __future__ import annotations

import copy
import importlib
import os
import sys

import pytest
import torch
import torch.nn as nn

# Triton picks interpreter or compiler when a kernel is decorated and reads the switch again at each launch,
# and other tests of a suite import Triton (through inductor) first: process-wide state. So in a suite this
# module runs itself in a fresh process with TRITON_INTERPRET set from the start (the one test below), and
# its tests proper run only there. On a GPU the kernels are compiled and run for real (the interpreter of
# the Triton that torch 2.11 ships also fails on them: "only 0-dimensional arrays can be converted").
IN_OWN_PROCESS = os.environ.get("RUNNER_FUSED_TESTS") == "1"
GPU = torch.cuda.is_available()
DEV = torch.device("cuda" if GPU else "cpu")
if not IN_OWN_PROCESS:
    def test_fused_kernels_in_their_own_process():
        import subprocess

        env = {**os.environ, "RUNNER_FUSED_TESTS": "1", "TRITON_INTERPRET": "0" if GPU else "1"}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                               __file__], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
else:
    import runner.fused as fused  # noqa: F401  (TRITON_INTERPRET was set before Triton was imported)

from models import get_model  # noqa: E402
from runner.optimize import Unsupported, fold_batchnorm, prepare, unsupported_reason  # noqa: E402
from variants import Variant  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch, request):
    if not IN_OWN_PROCESS and request.node.name != "test_fused_kernels_in_their_own_process":
        pytest.skip("runs in its own process (test_fused_kernels_in_their_own_process)")
    monkeypatch.setenv("TRITON_INTERPRET", "0" if GPU else "1")


SIDE = 16  # small images and widths keep the interpreter fast (each program is Python)


def _net(**kw) -> nn.Module:
    torch.manual_seed(0)
    m = get_model("fastnet_cifar", **kw).eval()
    for mod in m.modules():  # non-trivial BN statistics: the folded biases must matter
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.5)
    return m


CASES = {
    # whitening stem + pooled blocks: 3 kernels, the head inside the last (atomic logits, cleared by the first)
    "pooled-fused-head": dict(widths=(16, 32), convs_per_block=(1, 1), stem="whiten2x2", stem_width=8),
    # the same with the stem computed inside the first block's conv: 2 kernels
    "pooled-fused-stem": dict(widths=(16, 32), convs_per_block=(1, 1), stem="whiten2x2", stem_width=8,
                              fuse_stem=True),
    # no pool in the first block, two convs there, relu, a 3x3 stem; K split over programs (workspace)
    "unpooled-relu-split-k": dict(widths=(16, 32), convs_per_block=(2, 1), pooled=(False, True),
                                  stem="conv3x3", stem_width=8, act="relu", split_k=True, side=10),
    # no pooling at all, avg pools, silu: the last map is too big for one tile -> the separate head kernel
    "unpooled-head-kernel": dict(widths=(16,), convs_per_block=(1,), pooled=(False,), stem="conv3x3",
                                 stem_width=8, act="silu", pool="avg", side=18),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_logits_match_the_folded_fp32_model(case):
    kw = dict(CASES[case])
    side, split_k, fuse_stem = kw.pop("side", SIDE), kw.pop("split_k", False), kw.pop("fuse_stem", False)
    folded, n = fold_batchnorm(_net(**kw))
    assert n > 0
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    fn = fused.fused_forward(copy.deepcopy(folded).half().to(DEV), x[:1].half().to(DEV),
                             target_programs=8 if split_k else 4,
                             split_k=split_k, fuse_stem=fuse_stem)
    assert len(fn.layers) == 1 + sum(kw["convs_per_block"]) - fuse_stem  # the stem, the blocks' convs
    assert (max(L["split"] for L in fn.layers) > 1) == split_k
    expect_head_kernel = case == "unpooled-head-kernel"
    assert (fn.layers[-1]["k"]["HEAD"] == 0) == expect_head_kernel
    assert fn.kernels == len(fn.layers) + expect_head_kernel
    with torch.no_grad():
        ref = folded(x)
    # batch 1 NCHW (twice with split K: its workspace must be left zeroed), batch 2 channels_last
    for xb in [x[:1]] * (1 + split_k) + [x.contiguous(memory_format=torch.channels_last)]:
        got = fn(xb.half().to(DEV)).cpu()
        assert got.shape == (len(xb), 10) and got.dtype == torch.float32
        err = float((got - ref[:len(xb)]).abs().max() / ref[:len(xb)].abs().max())
        assert err < 5e-3, f"{case} batch {len(xb)}: relative logit error {err:.2e}"
    assert torch.equal(got.argmax(1), ref.argmax(1))


def test_refuses_what_it_cannot_fuse():
    x = torch.zeros(1, 3, SIDE, SIDE, dtype=torch.float16)
    net = _net(**CASES["pooled-fused-head"])
    with pytest.raises(Unsupported, match="BatchNorm2d"):  # not folded
        fused.fused_forward(net.half(), x)
    odd = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Dropout(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    with pytest.raises(Unsupported, match="Dropout"):
        fused.fused_forward(odd, x)
    strided = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1))
    with pytest.raises(Unsupported, match="stride 1"):
        fused.fused_forward(strided, x)
    pool3 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.MaxPool2d(3))
    with pytest.raises(Unsupported, match="2x2"):
        fused.fused_forward(pool3, x)
    no_head = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
    with pytest.raises(Unsupported, match="linear"):
        fused.fused_forward(no_head, x)


def test_needs_cuda_unless_interpreted(monkeypatch):
    monkeypatch.setattr(fused, "INTERPRETED", False)
    folded, _ = fold_batchnorm(_net(**CASES["pooled-fused-head"]))
    with pytest.raises(Unsupported, match="CUDA"):
        fused.fused_forward(folded, torch.zeros(1, 3, SIDE, SIDE))


def test_the_compile_axis_skips_fused_without_fold_fp16_or_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    ok = Variant(model="m", precision="fp16", memory_format="channels_last", compile="fused", cuda_graph=True,
                 bn_fold=True)
    assert unsupported_reason(ok, gpu) is None
    assert "bn_fold" in unsupported_reason(Variant(model="m", precision="fp16", compile="fused"), gpu)
    assert "fp16" in unsupported_reason(Variant(model="m", compile="fused", bn_fold=True), gpu)
    assert "CUDA" in unsupported_reason(ok, cpu)
    with pytest.raises(Unsupported, match="fused"):
        prepare(_net(**CASES["pooled-fused-head"]), ok, cpu)
    assert ok.variant_id == "m-fp16-cl-fused-graph-fold"


def test_prepare_builds_the_fused_path_and_keeps_tta(monkeypatch):
    """The hook in runner.optimize.prepare (on a CPU with the device check patched out; no graph capture)."""
    import functools

    import runner.optimize as optimize
    if not GPU:
        monkeypatch.setattr(optimize, "unsupported_reason", lambda v, d: None)
    monkeypatch.setattr(fused, "fused_forward", functools.partial(fused.fused_forward, target_programs=1))
    net = _net(**CASES["pooled-fused-head"])
    v = Variant(model="m", precision="fp16", memory_format="channels_last", compile="fused", bn_fold=True, tta="flip")
    prep = prepare(copy.deepcopy(net), v, DEV)
    x = prep.cast_input(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(DEV))
    with torch.no_grad():
        ref = optimize.with_tta(fold_batchnorm(net)[0], "flip")(x.float().cpu())
        got = prep.forward(x).float().cpu()
    assert got.shape == (1, 10) and float((got - ref).abs().max() / ref.abs().max()) < 5e-3
