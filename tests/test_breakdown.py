"""runner/breakdown.py: None fields with a note without a GPU; real properties on a GPU (skipped here)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import get_model
from runner.breakdown import BREAKDOWN_FIELDS, FLOOR_FIELDS, kernel_breakdown, launch_floor
from runner.optimize import prepare
from variants import Variant

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_gives_none_fields_and_a_note():
    floor = launch_floor(torch.device("cpu"))
    assert set(floor) == {*FLOOR_FIELDS, "breakdown_note"}
    assert all(floor[f] is None for f in FLOOR_FIELDS) and "no CUDA device" in floor["breakdown_note"]
    calls = []
    parts = kernel_breakdown(lambda x: calls.append(x), torch.randn(1, 3, 32, 32))
    assert set(parts) == {*BREAKDOWN_FIELDS, "breakdown_note"}
    assert all(parts[f] is None for f in BREAKDOWN_FIELDS) and "no CUDA device" in parts["breakdown_note"]
    assert calls == []  # nothing is run on the CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer for a cuda device name")
def test_cuda_requested_without_a_gpu():
    assert launch_floor("cuda")["floor_p50_us"] is None


# ---- on a GPU ------------------------------------------------------------------------------------------

@GPU
def test_launch_floor_on_gpu():
    floor = launch_floor(torch.device("cuda"), replays=100)
    assert floor["breakdown_note"] is None
    assert 0 < floor["floor_p50_us"] <= floor["floor_p95_us"] < 10_000


def _n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


@GPU
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_kernel_breakdown_counts_at_least_one_kernel_per_conv(graph):
    dev = torch.device("cuda")
    model = get_model("fastnet_cifar", convs_per_block=(1, 2, 2))
    k = _n_convs(model)
    prepared = prepare(model, Variant("m", precision="fp16", memory_format="channels_last",
                                      cuda_graph=graph, bn_fold=True), dev)
    fn, x, _ = prepared.callable_for(1)
    parts = kernel_breakdown(fn, x, replays=10)
    assert parts["breakdown_note"] is None, parts
    assert parts["kernels_per_forward"] >= k
    assert parts["kernels_per_forward"] == int(parts["kernels_per_forward"])  # the same kernels every call
    assert 0 < parts["kernel_us_per_forward"] < parts["wall_us_per_forward"]
    assert parts["gap_us_per_forward"] == pytest.approx(parts["wall_us_per_forward"] - parts["kernel_us_per_forward"])


@GPU
def test_graph_runs_the_model_kernels_as_eager_does():
    dev = torch.device("cuda")
    model = get_model("fastnet_cifar")
    counts = []
    for graph in (False, True):
        fn, x, _ = prepare(model, Variant("m", precision="fp16", cuda_graph=graph, bn_fold=True), dev).callable_for(1)
        counts.append(kernel_breakdown(fn, x, replays=10)["kernels_per_forward"])
    # The same model kernels; a replay may add up to two small fills of its own (CUDAGraph::replay's
    # prologue, pytorch/pytorch#143572), which are part of what the benchmark times, so they count.
    assert 0 <= counts[1] - counts[0] <= 2, counts


@GPU
def test_a_failing_forward_is_reported_not_raised():
    def broken(x):
        raise RuntimeError("boom")
    parts = kernel_breakdown(broken, torch.zeros(1, device="cuda"))
    assert parts["kernels_per_forward"] is None and "RuntimeError: boom" in parts["breakdown_note"]


def test_no_timing_in_a_process_that_has_profiled(monkeypatch):
    """runner.bench refuses to time once kernel_breakdown has run the CUDA profiler in the process: every later
    launch is slower there (docs/investigations/h200-inflation/). The flag is set by hand here: on a CPU
    nothing profiles."""
    from runner import bench, breakdown

    fn = torch.nn.Identity()
    x = torch.zeros(1, 3, 32, 32)
    assert not breakdown.profiled() and len(bench.measure(fn, x, warmup=1, iters=3, repeats=1)[0].lat_ms) == 3
    monkeypatch.setattr(breakdown, "_profiled", True)
    with pytest.raises(RuntimeError, match="torch.profiler.*h200-inflation"):
        bench.measure(fn, x, warmup=1, iters=3, repeats=1)


@GPU
def test_a_cuda_profile_marks_the_process(monkeypatch):
    from runner import breakdown

    monkeypatch.setattr(breakdown, "_profiled", False)  # restored after: later GPU tests still time
    x = torch.zeros(1, 3, 32, 32, device="cuda")
    parts = kernel_breakdown(lambda t: t * 2, x, replays=3, wall_us=10.0)
    assert breakdown.profiled() and parts["wall_us_per_forward"] == 10.0
