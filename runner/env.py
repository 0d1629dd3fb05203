"""What a result row records about where it ran: versions, device, GPU state through NVML.

Used by `runner/train.py` and `runner/bench.py` inside Ray tasks; nothing here is cached globally.
"""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from runner.diagnostics import nvml


def git_commit() -> str:
    """The project's commit (with -dirty when the tree has changes); 'unknown' outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    sha = os.environ.get("RUNNER_GIT_COMMIT")  # the driver passes its commit to workers on other nodes
    if sha:
        return sha
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, Any]:
    try:
        import ray
        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "cudnn_version": str(cudnn) if cudnn else None, "ray_version": ray_version,
            "hostname": socket.gethostname(), "git_commit": git_commit()}


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"device": "cpu", "gpu_name": None, "gpu_uuid": None}
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    return {"device": "cuda", "gpu_name": props.name, "gpu_uuid": f"GPU-{uuid}" if uuid is not None else None}


def nvml_state(gpu_uuid: str | None) -> dict[str, Any]:
    """Clocks, temperature, driver and the other compute processes on this GPU (NVML, when present).

    The exclusivity check is the invariant 'one latency job per device' made visible in every row:
    Ray already reserves the whole GPU, but something outside Ray (another user, a stray process)
    can still be there, and it silently inflates host-side latency. Keys: gpu_exclusive,
    gpu_other_pids, sm_clock_mhz, temp_c, driver_version (see `runner.diagnostics.nvml.gpu_state`).
    """
    return nvml.gpu_state(gpu_uuid)
