"""Process-wide state a test may leave behind, restored after every test so the suite passes in any order.

`runner.breakdown` remembers that this process ran torch.profiler and `runner.bench` then refuses to time
(every later launch reads slow: reports/h200-inflation/). On a GPU machine the breakdown tests profile for
real, so without this every later timing test in the session would fail there (issue 22).
"""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _forget_profiling():
    yield
    from runner import breakdown

    breakdown._profiled = False
