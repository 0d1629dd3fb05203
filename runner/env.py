"""What a result row records about where it ran: versions, device, GPU state through NVML.

Used by `runner/train.py` and `runner/bench.py` inside Ray tasks; nothing here is cached globally.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
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

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
    try:
        # Only the project's own checkout: a copy unpacked inside another repository must not record that
        # repository's commit (git walks up from `root` to the first .git it finds).
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != root:
            return "unknown"
        sha = git("rev-parse", "--short=12", "HEAD")
        return (sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or "unknown"
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


def code_digest() -> str:
    """sha256 (12 hex) of the project's Python sources: what a resumed row must have been measured by.

    Unlike the git commit it needs no .git (the checkout may travel without it, or over a stale one)
    and it changes with every uncommitted edit that could change a number.
    """
    import hashlib

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in ("runner", "models", "variants"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


class GpuMonitor:
    """NVML sampled *during* a timing (every `period_s`, in a thread), not only before and after it.

        with GpuMonitor(gpu_uuid) as gpu:
            ... time ...
        row.update(gpu.summary())

    Records the SM clock range, the peak temperature and every other compute process seen while timing.
    Without NVML (no GPU, nvidia-ml-py missing) the summary says so in `nvml_note` and the rest is None.
    """

    def __init__(self, gpu_uuid: str | None, period_s: float = 0.25):
        self.uuid, self.period = gpu_uuid, period_s
        self.samples: list[dict[str, Any]] = []
        self.note: str | None = None
        self._stop = None
        self._thread = None

    def __enter__(self) -> "GpuMonitor":
        first = nvml_state(self.uuid)
        if not self.uuid:
            self.note = "no GPU: NVML not read"
            return self
        if first["sm_clock_mhz"] is None:
            self.note = first["gpu_other_pids"] or "NVML unavailable (install nvidia-ml-py)"
            return self
        self.samples.append(first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(nvml_state(self.uuid))

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.samples.append(nvml_state(self.uuid))

    def summary(self) -> dict[str, Any]:
        return gpu_summary([self])


def gpu_summary(monitors: list[GpuMonitor]) -> dict[str, Any]:
    """One summary of the samples of `monitors`, pooled in order: a variant whose repeats were each timed
    under their own monitor (runner/engine/worker.py) gets the columns a single monitor gives, over all of
    them (clock range and peak temperature over every repeat, samples summed, notes once each)."""
    s = [x for m in monitors for x in m.samples if x["sm_clock_mhz"] is not None]
    note = "; ".join(dict.fromkeys(m.note for m in monitors if m.note)) or None
    if not s:
        return {"nvml_note": note, "gpu_exclusive": None, "nvml_samples": 0}
    others = sorted({p for x in s for p in (x["gpu_other_pids"] or "").split(",") if p.strip().isdigit()})
    exclusive = [x["gpu_exclusive"] for x in s]
    return {"nvml_note": note, "nvml_samples": len(s),
            "gpu_exclusive": None if None in exclusive else all(exclusive),
            "gpu_other_pids": ",".join(others) or s[0]["gpu_other_pids"],
            "sm_clock_mhz_before": s[0]["sm_clock_mhz"], "sm_clock_mhz_after": s[-1]["sm_clock_mhz"],
            "sm_clock_mhz_min": min(x["sm_clock_mhz"] for x in s),
            "sm_clock_mhz_max": max(x["sm_clock_mhz"] for x in s),
            "temp_c_before": s[0]["temp_c"], "temp_c_after": s[-1]["temp_c"],
            "temp_c_max": max(x["temp_c"] for x in s), "driver_version": s[0]["driver_version"]}
