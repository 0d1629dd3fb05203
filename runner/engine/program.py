"""What each benchmark actor does, in which order, and when the driver lets it: pure logic, no Ray.

    programs = assign(groups, actors)                   # model groups spread over the actors (LPT)
    steps = bench_program(models, variants, pairs, ...)  # one actor's ordered steps
    gate = HostGate(); gate.may_start(host, kind)         # the driver's barrier, per host

**The program.** One actor per GPU lives for a whole phase and runs its steps in order:

    load every model -> for each stage (non-compiling, then compiling): prepare all, time all in slices,
    time the pairs, check all (accuracy and numerical checks; the rows land here) -> profile all, last

Why this order, measured: a process that profiled times every later launch slower (reports/h200-inflation/),
so the kernel breakdown comes after the actor's last timing; a process that trained times eager code slower
(reports/h200-contention/), so actors never train. What an actor did before (graph capture, an accuracy pass,
a compile) moved B1's eager timing by less than the host's own swings in one process (2.66-5.79 ms,
reports/engine/actor_history.json), so nothing forced more; the order still times every variant of a stage
before checking any, and eager before compiled, which costs nothing.

**The gate.** On one host, a timing (`time`, `pair`) runs alone: no other step of ours on that host starts
while it runs, and it starts only when none runs (a neighbour's compile or evaluation inflated timings 1.2-2.7x
on 2x H200: reports/h200x2-default/). Other steps overlap freely across the host's GPUs. A timing that waits
blocks new non-timing starts on its host (writer preference), so it is never starved. The driver enforces
this by submitting each actor's next step only when the gate allows it: no lock is held in task code.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Iterable

TIMING = frozenset({"time", "pair"})


@dataclasses.dataclass(frozen=True)
class Step:
    """One remote call on an actor: `kind` names the method, `args` its arguments, `stage` the stage it
    belongs to ("" for load / profile), `ids` the variants it concerns (for progress and landing)."""
    kind: str
    args: tuple = ()
    stage: str = ""
    ids: tuple[str, ...] = ()

    @property
    def timing(self) -> bool:
        return self.kind in TIMING


def compiles(v: Any) -> bool:
    return getattr(v, "compile", "none") != "none"


def stages(variants: Iterable[Any]) -> list[tuple[str, list[Any]]]:
    """(stage name, its variants in the given order): non-compiling first, then compiling; empty ones left out."""
    variants = list(variants)
    out = [("eager", [v for v in variants if not compiles(v)]), ("compiling", [v for v in variants if compiles(v)])]
    return [(name, vs) for name, vs in out if vs]


def bench_program(models: list[str], variants: list[Any], pairs: list[tuple[Any, Any]], slices: int, *,
                  recheck: bool = False) -> list[Step]:
    """The ordered steps of one actor (module text). `pairs` are (parent, child) variants both in
    `variants`; a pair is timed in the stage of the later of its two sides. A re-check program times in
    the reverse of the given order and has no pairs, checks or profile: it only times."""
    steps = [Step("load", (m,)) for m in models]
    order = list(reversed(variants)) if recheck else list(variants)
    done: set[str] = set()
    for name, vs in stages(order):
        ids = tuple(v.variant_id for v in vs)
        steps += [Step("prepare", (v,), name, (v.variant_id,)) for v in vs]
        steps += [Step("time", (ids, s), name, ids) for s in range(slices)]
        done |= set(ids)
        if recheck:
            steps.append(Step("recheck_rows", (ids,), name, ids))
            continue
        for parent, child in pairs:
            if {parent.variant_id, child.variant_id} <= done and (parent.variant_id in ids or child.variant_id in ids):
                steps.append(Step("pair", (parent, child), name, (child.variant_id,)))
        steps += [Step("finish", (v.variant_id,), name, (v.variant_id,)) for v in vs]
    if not recheck and variants:
        steps.append(Step("profile", (tuple(v.variant_id for v in order),), "", ()))
    return steps


def assign(costs: dict[str, float], n_actors: int, rotate: int = 0) -> list[list[str]]:
    """Model keys spread over `n_actors`: longest expected first, each to the least loaded actor (LPT).
    `rotate` shifts the actor each list goes to (a re-check puts a model on another GPU when it can)."""
    n = max(1, n_actors)
    load = [0.0] * n
    out: list[list[str]] = [[] for _ in range(n)]
    for key in sorted(costs, key=lambda k: (-costs[k], k)):
        i = min(range(n), key=lambda j: (load[j], j))
        out[i].append(key)
        load[i] += costs[key]
    return [out[(i - rotate) % n] for i in range(n)]


class HostGate:
    """Per host: which steps run now; `may_start` says whether a step of `kind` may start (module text)."""

    def __init__(self) -> None:
        self.running: dict[str, Counter] = {}
        self.waiting: Counter = Counter()   # host -> timings that asked and were refused

    def may_start(self, host: str, kind: str) -> bool:
        run = self.running.get(host, Counter())
        if kind in TIMING:
            ok = sum(run.values()) == 0
            if not ok:
                self.waiting[host] += 1
            return ok
        return sum(run[k] for k in TIMING) == 0 and self.waiting[host] == 0

    def started(self, host: str, kind: str) -> None:
        self.running.setdefault(host, Counter())[kind] += 1

    def ended(self, host: str, kind: str) -> None:
        self.running[host][kind] -= 1

    def new_round(self) -> None:
        """Forget refused timings: called before each pass of the driver over its idle actors."""
        self.waiting.clear()

    def timing_on(self, host: str) -> bool:
        run = self.running.get(host, Counter())
        return sum(run[k] for k in TIMING) > 0
