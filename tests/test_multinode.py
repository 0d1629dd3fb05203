"""A sweep on a real two-node Ray cluster (ray.cluster_utils.Cluster: a head and a worker node, CPU only),
joined with `--address` as on a real cluster: the code travels as the job's working_dir, data and
checkpoints through the object store, and rows come back to the driver with the node that made them; the
cluster outlives the driver that joined it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import ray
from ray.cluster_utils import Cluster

from runner import reaper
from runner.cli import main

pytestmark = pytest.mark.slow

SWEEP = """
sweep: multinode
data: {source: synthetic}
bench: {warmup: 2, iters: 10, repeats: 2, eval_batch_size: 64, processes: 1, recheck: -1}  # no twins, no re-check
# phase: test_sweep_e2e has them, and each is one more process to start
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.125}
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 128, test_subset: 64}
  other:                        # no teacher: the two trainings run at once, one a node (a teacher chain
    arch: airbench_cifar        # would make them wait on each other; test_sweep_e2e has distillation)
    arch_args: {width_mult: 0.125}
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 128, test_subset: 64}
grid:
  - models: [tiny]
    memory_format: [contiguous, channels_last]   # fp32 only: bf16 convolutions take 150-170 ms a call here
  - models: [other]
"""


@pytest.fixture(scope="module")
def cluster():
    # Two nodes of 2 logical CPUs each: on a CPU-only cluster a bench task takes a whole node's CPUs
    # (runner.sweep.task_resources), so two benches at once must run on different nodes.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def test_sweep_through_address_lands_every_row_from_both_nodes(cluster, tmp_path, capsys):
    cfg = tmp_path / "multinode.yaml"
    cfg.write_text(SWEEP)
    out = tmp_path / "runs"
    rc = main(["sweep", "--config", str(cfg), "--address", cluster.address, "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "Ray cluster: 2 node(s)" in text
    run_dir = out / "multinode"
    res = pd.read_parquet(run_dir / "results.parquet")
    planned = {"tiny-fp32-nchw-eager", "tiny-fp32-cl-eager", "other-fp32-nchw-eager"}
    assert set(res["variant_id"]) == planned
    assert (res["status"] == "ok").all(), res[res["status"] != "ok"][["variant_id", "error"]]
    assert set(res.groupby("variant_id")["repeat"].count()) == {2}
    training = pd.read_parquet(run_dir / "training.parquet")
    assert set(training["model"]) == {"tiny", "other"} and (training["status"] == "ok").all()
    ran = set(res["ray_node_id"]) | set(training["ray_node_id"])
    ray.init(address=cluster.address)  # the sweep has disconnected; ask the cluster which nodes it has
    try:
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
    assert len(nodes) == 2 and ran <= nodes, (ran, nodes)
    assert ran == nodes, f"every task ran on one node: {ran}"
    # A driver that joined a cluster never stops it, even SIGKILLed: it starts no reaper (runner/reaper.py).
    # Had it started one, its clean exit would have asked it to stop the cluster: no two live nodes above,
    # and the reaper's log in the cluster's session.
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
    assert logs.is_dir() and not (logs / reaper.LOG_NAME).exists()
