"""Validate cluster.yaml with Ray's own cluster-launcher validation.

Mirrors what `ray up` does before it talks to the cloud
(ray.autoscaler._private.commands._bootstrap_config): `prepare_config` (merge the
AWS defaults, merge setup commands, fill per-type min/max workers) followed by
`validate_config` (ray-schema.json via jsonschema, plus cross-field checks).
No network, no AWS credentials, no boto3.
"""

import copy
from pathlib import Path

import pytest

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

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
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
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] == "us-west-2"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_gpu_worker_declares_gpus(config):
    types = config["available_node_types"]
    assert GPU_WORKER in types
    worker = types[GPU_WORKER]
    gpus = worker["resources"].get("GPU", 0)
    assert gpus > 0, "GPU worker must declare a GPU resource so the autoscaler scales for GPU tasks"
    instance = worker["node_config"]["InstanceType"]
    if instance in KNOWN_GPU_COUNTS:
        assert gpus == KNOWN_GPU_COUNTS[instance], f"{instance} has {KNOWN_GPU_COUNTS[instance]} GPUs"
    assert worker["min_workers"] == 0
    assert 0 < worker["max_workers"] <= config["max_workers"]


def test_head_gets_no_gpu_work(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0


def test_setup_installs_project(config):
    mounts = config["file_mounts"]
    assert mounts.get("~/cifar-runner") == "."
    cmds = ray_validate(config)["worker_setup_commands"]  # setup_commands merged in
    installs = [c for c in cmds if "pip install" in c and "-e" in c and "cifar-runner" in c]
    assert installs, f"no `pip install -e ~/cifar-runner` in setup commands: {cmds}"
    assert any("torch>=2.11" in c for c in installs)


def test_docker_image_matches_local_ray(config):
    # The launcher requires the same Ray version locally and on the cluster.
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-"), image


def test_start_commands(config):
    for key, must in [
        ("head_start_ray_commands", ["--head", "--port=6379", "--autoscaling-config=~/ray_bootstrap_config.yaml"]),
        ("worker_start_ray_commands", ["--address=$RAY_HEAD_IP:6379"]),
    ]:
        cmds = config[key]
        assert cmds[0].strip() == "ray stop", key
        start = [c for c in cmds if "ray start" in c]
        assert len(start) == 1 and cmds.index(start[0]) > 0, key
        for flag in must:
            assert flag in start[0], (key, flag)
        assert "RAY_AUTH_MODE=token" in start[0], key


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
