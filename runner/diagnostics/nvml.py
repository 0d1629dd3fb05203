"""Every NVML query of the project: the compute processes on a GPU, its clocks, temperature and driver.

Used by `runner.env.nvml_state` (every benchmark row records it) and by the exclusivity check. NVML comes
from the `nvidia-ml-py` package (imported as `pynvml`); where it or a driver is missing, the answers are
None and the reason is kept, so a CPU machine or a container without NVML never fails a benchmark.
"""
from __future__ import annotations

import os
from typing import Any, Callable


class NvmlUnavailable(RuntimeError):
    """pynvml is not installed, NVML cannot start, or the GPU is unknown to it."""


def query(gpu_uuid: str, fn: Callable[[Any, Any], Any]) -> Any:
    """fn(pynvml, device handle) inside one nvmlInit / nvmlShutdown pair (no global NVML state is kept:
    these calls run in long-lived Ray workers, before and after every benchmark)."""
    try:
        import pynvml as nv
    except ImportError:
        raise NvmlUnavailable("pynvml missing (pip install nvidia-ml-py)") from None
    try:
        nv.nvmlInit()
    except Exception as e:
        raise NvmlUnavailable(f"NVML does not start: {e}") from None
    try:
        return fn(nv, nv.nvmlDeviceGetHandleByUUID(gpu_uuid))
    finally:
        nv.nvmlShutdown()


def device_names() -> list[str] | None:
    """The name of every GPU NVML sees on this machine ("NVIDIA H200"), without a CUDA context; None when
    NVML cannot tell (no pynvml, no driver)."""
    try:
        import pynvml as nv
        nv.nvmlInit()
    except Exception:
        return None
    try:
        names = [nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i)) for i in range(nv.nvmlDeviceGetCount())]
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except Exception:
        return None
    finally:
        nv.nvmlShutdown()


def compute_pids(gpu_uuid: str | None) -> list[int] | None:
    """Every compute pid NVML lists on the GPU, ours included; None when NVML cannot tell.
    In a container NVML reports host pids, so our own pid may be missing from the list."""
    if not gpu_uuid:
        return None
    try:
        return query(gpu_uuid, lambda nv, h: sorted({p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses(h)}))
    except Exception:
        return None


def exclusive(pids: list[int], me: int) -> tuple[bool | None, str]:
    """(is the GPU ours alone, the other pids as text). Exclusive only when NVML lists *us* and nobody
    else: if our own pid is missing (another pid namespace, a sandbox that hides processes), an empty
    list proves nothing, so the answer is None."""
    others = sorted(set(pids) - {me})
    answer = (not others) if me in pids else (False if others else None)
    note = "" if me in pids else f" (own pid {me} not listed by NVML)"
    return answer, ",".join(map(str, others)) + note


def gpu_state(gpu_uuid: str | None) -> dict[str, Any]:
    """gpu_exclusive, gpu_other_pids, sm_clock_mhz, temp_c, driver_version of one GPU (None when unknown)."""
    out: dict[str, Any] = {"gpu_exclusive": None, "gpu_other_pids": None, "sm_clock_mhz": None,
                           "temp_c": None, "driver_version": None}
    if not gpu_uuid:
        return out

    def read(nv, h) -> dict[str, Any]:
        pids = [p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses(h)]
        excl, others = exclusive(pids, os.getpid())
        driver = nv.nvmlSystemGetDriverVersion()
        return {"gpu_exclusive": excl, "gpu_other_pids": others,
                "sm_clock_mhz": float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                "temp_c": float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                "driver_version": driver.decode() if isinstance(driver, bytes) else str(driver)}
    try:
        out.update(query(gpu_uuid, read))
    except NvmlUnavailable as e:
        if "pynvml missing" not in str(e):  # no pynvml at all: the row just has no GPU state
            out["gpu_other_pids"] = f"nvml error: {e}"
    except Exception as e:  # the UUID unknown, a driver error: record, don't fail the bench
        out["gpu_other_pids"] = f"nvml error: {e}"
    return out
