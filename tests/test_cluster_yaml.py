"""Validate cluster.yaml with Ray's own cluster-launcher validation.

Mirrors what `ray up` does before it talks to the cloud
(ray.autoscaler._private.commands._bootstrap_config): `prepare_config` (merge the
AWS defaults, merge setup commands, fill per-type min/max workers) followed by
`validate_config` (ray-schema.json via jsonschema, plus cross-field checks).
No network, no AWS credentials, no boto3.
"""

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from runner.sweep import resources

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to read cluster.yaml")
try:
    import ray
    import jsonschema  # noqa: F401  (validate_config needs it; ships with ray[default])
    from ray.autoscaler._private.util import prepare_config, validate_config
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(
        f"ray[default] (with jsonschema) is not importable: {exc}",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
GPU_WORKER = "gpu_worker"

# GPUs per instance for common AWS GPU types, to catch an InstanceType change
# that forgot to update the declared GPU resource.
KNOWN_GPU_COUNTS = {
    "g4dn.xlarge": 1,
    "g4dn.12xlarge": 4,
    "g5.xlarge": 1,
    "g5.2xlarge": 1,
    "g5.12xlarge": 4,
    "g5.48xlarge": 8,
    "g6.xlarge": 1,
    "g6.12xlarge": 4,
    "g6.48xlarge": 8,
    "p4d.24xlarge": 8,
    "p5.48xlarge": 8,
}


def load_config():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def ray_validate(config):
    """What `ray up` runs on the config before any provider call."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config():
    return load_config()


def test_passes_ray_validation(config):
    prepared = ray_validate(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _cluster_tasks(config) -> tuple[dict, dict]:
    """The (train, bench actor) resource requests the sweep makes on this cluster (runner/sweep.resources),
    one training per GPU (`train.per_gpu: 1`)."""
    gpus = sum(t["resources"].get("GPU", 0) * t.get("max_workers", 0)
               for t in config["available_node_types"].values())
    return resources(gpus, min(t["resources"]["CPU"] for t in config["available_node_types"].values()), 1)


def _fits(task: dict, resources: dict) -> int:
    """How many copies of a task with these Ray options fit on an idle node declaring these resources."""
    names = {"num_gpus": "GPU", "num_cpus": "CPU"}
    return min(int(resources.get(names[k], 0) // v) for k, v in task.items() if v > 0)


def test_gpu_worker_runs_one_task_per_gpu(config):
    """Workers declare their GPUs (the autoscaler scales on the declared numbers), matching the instance, and
    enough CPUs that every GPU gets a benchmark at once; they scale from zero, within the cluster's cap."""
    worker = config["available_node_types"][GPU_WORKER]
    gpus = worker["resources"].get("GPU", 0)
    assert gpus > 0, "GPU worker must declare a GPU resource so the autoscaler scales for GPU tasks"
    instance = worker["node_config"]["InstanceType"]
    if instance in KNOWN_GPU_COUNTS:
        assert gpus == KNOWN_GPU_COUNTS[instance], f"{instance} has {KNOWN_GPU_COUNTS[instance]} GPUs"
    train, bench = _cluster_tasks(config)
    assert _fits(bench, worker["resources"]) == _fits(train, worker["resources"]) == gpus
    assert worker["min_workers"] == 0, "an idle cluster must not keep (and bill) a GPU worker"
    assert 0 < worker["max_workers"] <= config["max_workers"]


def test_head_runs_no_training_and_no_benchmark(config):
    """The head runs the driver, dashboard and autoscaler; a benchmark there would share its host."""
    head = config["available_node_types"][config["head_node_type"]]
    for task in _cluster_tasks(config):
        assert _fits(task, head["resources"]) == 0, task


def _home(path: str) -> str:
    return path.replace("$HOME", "~").rstrip("/")


def test_setup_installs_the_synced_checkout_on_every_node(config):
    """The checkout is synced to one path; setup (run on head and workers) installs that path, editable, with
    the same torch / torchvision requirements as pyproject.toml; README's cluster command runs from there."""
    synced = [_home(dest) for dest, src in config["file_mounts"].items() if src == "."]
    assert len(synced) == 1, config["file_mounts"]
    prepared = ray_validate(config)
    for key in ("head_setup_commands", "worker_setup_commands"):   # setup_commands are merged into both
        installs = [cmd for cmd in map(shlex.split, prepared[key]) if cmd[:2] == ["pip", "install"] and "-e" in cmd]
        assert [_home(cmd[cmd.index("-e") + 1]) for cmd in installs] == synced, (key, prepared[key])
    # requirements named beside the project (to upgrade the image's own torch) must not drift from pyproject's
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {Requirement(r).name: str(Requirement(r).specifier) for r in project}
    pinned = [Requirement(t) for t in installs[0][2:] if t[:1].isalpha()]
    assert pinned and all(str(r.specifier) == wanted[r.name] for r in pinned), (pinned, wanted)
    readme = re.findall(r"^cd (\S+) && python -m runner sweep .*--address auto$", (ROOT / "README.md").read_text(), re.M)
    assert readme and {_home(p) for p in readme} == set(synced)


def test_docker_image_matches_local_ray(config):
    # The launcher requires the same Ray version locally and on the cluster.
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-"), image


def test_workers_join_the_head_with_auth(config):
    """Workers connect to the port the head listens on; both start with token auth; a re-run of `ray up`
    stops the old Ray first; the head runs the autoscaler with the config the launcher uploads."""
    head, workers = config["head_start_ray_commands"], config["worker_start_ray_commands"]
    for cmds in (head, workers):
        assert cmds[0].strip() == "ray stop" and sum("ray start" in c for c in cmds) == 1
        assert all("RAY_AUTH_MODE=token" in c for c in cmds if "ray start" in c)
    head_start = next(c for c in head if "ray start" in c)
    port = re.search(r"--port=(\d+)", head_start).group(1)
    assert any(f"--address=$RAY_HEAD_IP:{port}" in c for c in workers)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start


def _unknown_top_level_key(c):
    c["max_worker"] = 2  # typo of max_workers


def _max_workers_not_int(c):
    c["max_workers"] = "two"


def _node_type_without_resources(c):
    del c["available_node_types"][GPU_WORKER]["resources"]


def _negative_gpu(c):
    c["available_node_types"][GPU_WORKER]["resources"]["GPU"] = -1


def _unknown_head_type(c):
    c["head_node_type"] = "no_such_type"


def _min_workers_exceed_max(c):
    c["available_node_types"][GPU_WORKER]["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize(
    "breakage",
    [
        _unknown_top_level_key,
        _max_workers_not_int,
        _node_type_without_resources,
        _negative_gpu,
        _unknown_head_type,
        _min_workers_exceed_max,
    ],
)
def test_broken_copy_fails_validation(config, breakage):
    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(broken)
