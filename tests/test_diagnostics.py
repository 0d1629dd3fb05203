"""runner/diagnostics: the one table printer and the one NVML module (no GPU here: NVML's absent paths)."""
from __future__ import annotations


import pytest

from runner import env
from runner.diagnostics import nvml
from runner.diagnostics.table import Column, render

STATE_KEYS = {"gpu_exclusive", "gpu_other_pids", "sm_clock_mhz", "temp_c", "driver_version"}


def test_table_aligns_columns_and_keeps_error_lines():
    cols = (Column("name", 6, "<"), Column("ms", 7))
    text = render(cols, [["a", "1.5"], "b      ERROR boom", ["longname", "22.25"]])
    lines = text.splitlines()
    assert lines[0] == "name        ms"
    assert lines[1] == "-" * len(lines[0])
    assert lines[2] == "a          1.5"
    assert lines[3] == "b      ERROR boom"
    assert lines[4] == "longname   22.25"        # too wide: kept whole, never cut
    with pytest.raises(ValueError, match="2 columns"):
        render(cols, [["only one"]])


def test_exclusive_needs_our_own_pid_listed():
    me = 100
    assert nvml.exclusive([100], me) == (True, "")
    assert nvml.exclusive([100, 7, 3], me) == (False, "3,7")
    excl, text = nvml.exclusive([], me)                     # NVML sees nobody, not even us: proves nothing
    assert excl is None and "own pid 100 not listed" in text
    excl, text = nvml.exclusive([7], me)
    assert excl is False and text.startswith("7")


def test_gpu_state_without_a_gpu_has_every_key_and_no_guess():
    assert nvml.gpu_state(None) == dict.fromkeys(STATE_KEYS)
    assert env.nvml_state(None) == dict.fromkeys(STATE_KEYS)  # env's row fields come from the same module
    assert nvml.compute_pids(None) is None
    # A GPU NVML does not know (or no NVML at all on this machine): None, with the reason where there is one.
    state = env.nvml_state("GPU-00000000-0000-0000-0000-000000000000")
    assert set(state) == STATE_KEYS and state["gpu_exclusive"] is None and state["sm_clock_mhz"] is None
    assert state["gpu_other_pids"] is None or state["gpu_other_pids"].startswith("nvml error")
    assert nvml.compute_pids("GPU-00000000-0000-0000-0000-000000000000") is None
