"""runner/optimize.py and runner/bench.py on the CPU: what is supported, BN folding, precision, timing stats."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from models import get_model
from runner.bench import Samples, cv_pct, measure, repeat_rows, stats
from runner.optimize import Unsupported, fold_batchnorm, prepare, state_size_mb, unsupported_reason
from runner.results import STATS
from variants import Variant

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only passed to unsupported_reason, which never touches the device


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _x(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _with_random_bn_stats(model: nn.Module, seed=0) -> nn.Module:
    """Give every BN non-trivial running stats and affine params, so folding changes the conv weights."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            if m.affine:
                m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return _with_random_bn_stats(get_model("mobilenet_v3_small_cifar"))


# ---- unsupported_reason / prepare ----------------------------------------------------------------------

UNSUPPORTED_ON_CPU = [
    dict(cuda_graph=True),
    dict(precision="fp16"),
    dict(precision="amp_fp16"),
    dict(compile="reduce-overhead"),
    dict(compile="max-autotune"),
    dict(compile="max-autotune-no-cudagraphs"),
]
SUPPORTED_ON_CPU = [
    dict(), dict(precision="bf16"), dict(memory_format="channels_last"), dict(bn_fold=True),
    dict(precision="bf16", memory_format="channels_last", bn_fold=True), dict(compile="default"),
]


@pytest.mark.parametrize("axes", UNSUPPORTED_ON_CPU, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_unsupported_on_cpu(axes):
    v = Variant("m", **axes)
    reason = unsupported_reason(v, CPU)
    assert isinstance(reason, str) and reason
    assert unsupported_reason(v, CUDA) is None  # every one of these is a GPU path
    with pytest.raises(Unsupported) as info:
        prepare(nn.Linear(2, 2), v, CPU)
    assert str(info.value) == reason


def test_reason_texts_name_the_cause():
    assert "CUDA" in unsupported_reason(Variant("m", cuda_graph=True), CPU)
    assert "fp16" in unsupported_reason(Variant("m", precision="fp16"), CPU)
    assert "reduce-overhead" in unsupported_reason(Variant("m", compile="reduce-overhead"), CPU)


@pytest.mark.parametrize("axes", SUPPORTED_ON_CPU, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()) or "fp32")
def test_supported_on_cpu(axes):
    assert unsupported_reason(Variant("m", **axes), CPU) is None


@pytest.mark.parametrize("device", [CPU, CUDA], ids=["cpu", "cuda"])
@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_graph_on_top_of_graphing_compile_is_refused_everywhere(device, mode):
    reason = unsupported_reason(Variant("m", compile=mode, cuda_graph=True), device)
    assert reason and mode in reason and "graph" in reason


def test_bn_fold_without_bn_is_unsupported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    with pytest.raises(Unsupported, match="nothing to fold"):
        prepare(model, Variant("m", bn_fold=True), CPU)


# ---- BN folding ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18_cifar", "mobilenet_v3_small_cifar"])
def test_fold_batchnorm_keeps_outputs(arch):
    torch.manual_seed(0)
    model = _with_random_bn_stats(get_model(arch))
    x = _x()
    with torch.inference_mode():
        ref = model(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, n = fold_batchnorm(model)
    assert 0 < n <= n_bn
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == n_bn - n
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn  # not in place
    with torch.inference_mode():
        out = folded(x)
        assert torch.equal(model(x), ref)  # original untouched
    scale = ref.abs().max()
    assert scale > 1e-3  # random BN stats make the logits non-trivial
    assert (out - ref).abs().max() <= 1e-4 * scale, (out - ref).abs().max() / scale
    # the variant path reports the same count
    p = prepare(model, Variant("m", bn_fold=True), CPU)
    assert p.notes == [f"folded {n} BatchNorm layers"]


# ---- precision, memory format, size --------------------------------------------------------------------

def test_bf16_close_to_fp32(mobilenet):
    x = _x(8)
    fp32 = prepare(mobilenet, Variant("m"), CPU)
    bf16 = prepare(mobilenet, Variant("m", precision="bf16"), CPU)
    assert bf16.input_dtype == torch.bfloat16
    with torch.inference_mode():
        ref = fp32.forward(fp32.cast_input(x))
        out = bf16.forward(bf16.cast_input(x))
    assert out.dtype == torch.bfloat16 and ref.dtype == torch.float32
    # bf16 keeps 8 mantissa bits (relative rounding ~0.4% per op); through ~50 layers of an untrained net
    # the error accumulates to about 1% of the logit scale (0.7% measured here); 5% leaves margin for other
    # CPU kernels, while a broken cast (overflow, a truncated scale) would be far off.
    rel = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    assert rel < 0.05, rel
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.5


def test_channels_last_input_and_same_outputs(mobilenet):
    x = _x()
    cl = prepare(mobilenet, Variant("m", memory_format="channels_last"), CPU)
    nchw = prepare(mobilenet, Variant("m"), CPU)
    xi = cl.cast_input(x)
    assert xi.is_contiguous(memory_format=torch.channels_last) and not xi.is_contiguous()
    assert nchw.cast_input(x).is_contiguous()
    with torch.inference_mode():
        a, b = cl.forward(xi), nchw.forward(nchw.cast_input(x))
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_size_mb_halves_from_fp32_to_bf16(mobilenet):
    fp32 = prepare(mobilenet, Variant("m"), CPU)
    bf16 = prepare(mobilenet, Variant("m", precision="bf16"), CPU)
    assert fp32.params == bf16.params == sum(p.numel() for p in mobilenet.parameters())
    # only the integer num_batches_tracked buffers keep 8 bytes each: a negligible remainder
    assert bf16.size_mb == pytest.approx(fp32.size_mb / 2, rel=1e-3)
    expected = sum(t.numel() * t.element_size() for t in [*mobilenet.parameters(), *mobilenet.buffers()]) / 1e6
    assert fp32.size_mb == pytest.approx(expected)
    assert state_size_mb(nn.Linear(10, 10)) == (pytest.approx(110 * 4 / 1e6), 110)


def test_prepare_does_not_touch_the_model(mobilenet):
    before = {k: v.clone() for k, v in mobilenet.state_dict().items()}
    prepare(mobilenet, Variant("m", precision="bf16", memory_format="channels_last", bn_fold=True), CPU)
    after = mobilenet.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert all(p.dtype == torch.float32 for p in mobilenet.parameters())


@pytest.mark.parametrize("axes", [dict(), dict(precision="bf16", memory_format="channels_last", bn_fold=True)],
                         ids=["fp32", "bf16-cl-fold"])
def test_runner_batch1(mobilenet, axes):
    p = prepare(mobilenet, Variant("m", **axes), CPU)
    fn, example, warm_s = p.callable_for(1)
    assert example.shape == (1, 3, 32, 32) and example.dtype == p.input_dtype
    with torch.inference_mode():
        y = fn(example)
    assert y.shape == (1, 10) and torch.isfinite(y.float()).all()
    fn8, ex8, _ = p.callable_for(8)
    assert ex8.shape == (8, 3, 32, 32)
    # same seeded example each call: batch 1 is the first image of batch 8
    assert torch.equal(ex8[:1], example)


_SLEEP_S = 0.05
_CALLS: list[int] = []   # module level: prepare() works on a copy of the model, so an attribute would not show


class _SlowNet(nn.Module):
    """A real module whose forward takes a known minimum time, so the warm-up time can be checked."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        _CALLS.append(x.shape[0])
        time.sleep(_SLEEP_S)
        return self.fc(x.flatten(1))


def test_runner_warm_time_is_the_warm_calls():
    """warm_s (reported as compile / warm-up time, never in a latency) covers exactly the warm calls."""
    p = prepare(_SlowNet(), Variant("m"), CPU)
    _CALLS.clear()
    fn, example, warm_s = p.callable_for(1, warm_calls=3)
    assert _CALLS == [1, 1, 1]                  # the warm calls ran, on the batch-1 example
    assert warm_s >= 3 * _SLEEP_S
    _CALLS.clear()
    _, _, cold_s = p.callable_for(1, warm_calls=0)
    assert _CALLS == [] and cold_s < 3 * _SLEEP_S
    with torch.inference_mode():
        fn(example)
    assert _CALLS == [1]                        # the returned callable is the model's forward


# ---- bench ---------------------------------------------------------------------------------------------

def test_stats_on_known_samples():
    s = stats(np.arange(1, 101))
    assert set(s) == set(STATS)
    assert s["mean"] == 50.5 and s["p50"] == 50.5 and s["min"] == 1.0
    assert s["p95"] == pytest.approx(95.05)   # numpy linear interpolation: 1 + 0.95 * 99
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["std"] == pytest.approx(math.sqrt((100 ** 2 - 1) / 12))  # population std of 1..100
    assert stats([2.0]) == {k: 2.0 if k != "std" else 0.0 for k in STATS}
    with pytest.raises(ValueError):
        stats([])


def test_cv_pct():
    assert cv_pct([1, 1, 1]) == 0.0
    assert cv_pct([1, 2, 3]) == pytest.approx(50.0)  # sample std 1 / mean 2
    assert cv_pct([5.0]) == 0.0
    assert cv_pct([0, 0]) == 0.0


def test_measure_on_cpu():
    calls = []

    def fn(x):
        calls.append(1)
        return x + 1

    out = measure(fn, torch.zeros(1, 3, 32, 32), warmup=2, iters=7, repeats=3)
    assert len(out) == 3 and len(calls) == 3 * (2 + 7)
    for s in out:
        assert isinstance(s, Samples) and s.timer == "host"
        assert s.host_ms.shape == (7,) and np.all(s.host_ms > 0) and np.all(np.isfinite(s.host_ms))
        assert np.array_equal(s.lat_ms, s.host_ms)
        assert s.host_ms.max() < 1e4


def test_measure_times_the_call():
    def slow(x):
        time.sleep(0.005)
        return x
    (s,) = measure(slow, torch.zeros(1), warmup=0, iters=3, repeats=1)
    assert np.all(s.host_ms >= 4.5)


def _samples(p50s):
    return [Samples(np.array([p * 0.9, p, p * 1.5]), np.array([p, p, p]) + 0.1, "host") for p in p50s]


def test_repeat_rows_flag_unstable():
    rows = repeat_rows(_samples([1.0, 2.0, 3.0]), cv_flag_pct=10.0)
    assert [r["repeat"] for r in rows] == [0, 1, 2]
    assert [r["lat_p50_ms"] for r in rows] == [1.0, 2.0, 3.0]
    assert [r["host_p50_ms"] for r in rows] == pytest.approx([1.1, 2.1, 3.1])
    assert all(r["lat_cv_pct"] == pytest.approx(50.0) and r["unstable"] is True for r in rows)
    assert all(r["timer"] == "host" for r in rows)
    assert {k for k in rows[0] if k.startswith("lat_")} == {f"lat_{s}_ms" for s in STATS} | {"lat_cv_pct"}

    stable = repeat_rows(_samples([2.0, 2.0, 2.0]), cv_flag_pct=10.0)
    assert all(r["lat_cv_pct"] == 0.0 and r["unstable"] is False for r in stable)
    # the flag is "CV exceeds the threshold"
    assert all(r["unstable"] is False for r in repeat_rows(_samples([1.0, 2.0, 3.0]), cv_flag_pct=50.0 + 1e-9))
    assert all(r["unstable"] is True for r in repeat_rows(_samples([1.0, 2.0, 3.0]), cv_flag_pct=49.9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (ran on the H200)")
def test_a_graph_callable_keeps_its_weights_alive():
    """A group task keeps only each variant's callable for its pairs; the graph reads the weights at fixed
    addresses, so the callable must keep them alive after the Prepared and the model are gone."""
    import gc

    device = torch.device("cuda", 0)
    model = get_model("airbench_cifar", num_classes=10).eval()
    v = Variant("airbench_cifar", precision="fp16", memory_format="channels_last", cuda_graph=True)
    prepared = prepare(model, v, device)
    fn, x, _ = prepared.callable_for(1)
    with torch.inference_mode():
        want = fn(x).float().clone()
    del prepared, model
    gc.collect()
    junk = [torch.full((1 << 20,), float("nan"), device=device) for _ in range(64)]  # reuse freed blocks
    with torch.inference_mode():
        got = fn(x).float()
    torch.cuda.synchronize(device)
    assert torch.equal(got, want)
    del junk


def test_measurement_flags_set_strict_fp32_and_cudnn_autotuning_only_when_asked():
    """Autotuning picked different kernels in each fresh process (docs/investigations/h200-process-spread/):
    an actor times with cuDNN's heuristics unless the bench says `cudnn_autotune: true`. The flags are
    process-wide (the actor's process is its own), so this runs in a subprocess that, before each call, sets
    the opposite values (one subprocess for both settings: each start imports torch, seconds on a 2-core CPU)."""
    import subprocess
    import sys

    code = ("import torch, torch._inductor.config as ic; from runner.engine.worker import measurement_flags\n"
            "for autotune in (False, True):\n"
            "    torch.backends.cudnn.benchmark = True; torch.backends.cudnn.allow_tf32 = True\n"
            "    torch.backends.cuda.matmul.allow_tf32 = True; torch.set_float32_matmul_precision('high')\n"
            "    ic.compile_threads = 4\n"
            "    measurement_flags(autotune)\n"
            "    print(torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,\n"
            "          torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(), ic.compile_threads)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = [line.split() for line in out.splitlines()]
    assert lines == [[str(autotune and torch.cuda.is_available()), "False", "False", "highest", "1"]
                     for autotune in (False, True)]


def test_switching_cudnn_autotune_measures_every_row_again():
    """A row timed with the other kernel choice is not the same measurement: the resume key changes."""
    from runner.sweep import variant_hash
    from variants import BenchSpec, TrainSpec, Variant

    v, m = Variant(model="m"), TrainSpec(key="m", arch="resnet18_cifar")
    off, on = (variant_hash(v, m, BenchSpec(cudnn_autotune=a), "synthetic", "code") for a in (False, True))
    assert off != on and off == variant_hash(v, m, BenchSpec(), "synthetic", "code")
