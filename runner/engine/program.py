"""What each benchmark actor does, in which order, and when the driver lets it: pure logic, no Ray.

    programs = assign(groups, actors)                   # model groups spread over the actors (LPT)
    steps = bench_program(models, variants, pairs, ...)  # one actor's ordered steps
    gate = HostGate(); gate.may_start(host, kind)         # the driver's barrier, per host

**The program.** One actor per GPU lives for a whole phase and runs its steps in order:

    load every model -> for each stage (a model's non-compiling variants; after all of them, each model's
    compiling ones): prepare all, time all round-robin in slices, decide the pairs from those rounds, check
    all (accuracy and numerical checks; the rows land here) -> profile all, last

Why this order, measured: a process that profiled times every later launch slower
(docs/investigations/h200-inflation/), so the kernel breakdown comes after the actor's last timing; a process
that trained times eager code slower (docs/investigations/h200-contention/), so actors never train. What an
actor did before (graph capture, an accuracy pass, a compile) moved B1's eager timing by less than the host's
own swings in one process (2.66-5.79 ms, reports/engine/actor_history.json), so nothing forced more; the order
still times every variant of a stage before checking any, and eager before compiled, which costs nothing.

**The gate.** On one host, a timing (`time`) runs alone: no other step of ours on that host starts
while it runs, and it starts only when none runs (a neighbour's compile or evaluation inflated timings 1.2-2.7x
on 2x H200: reports/h200x2-default/). Other steps overlap freely across the host's GPUs. A timing that waits
blocks new non-timing starts on its host (writer preference), so it is never starved. The driver enforces
this by submitting each actor's next step only when the gate allows it: no lock is held in task code.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Iterable

TIMING = frozenset({"time"})


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
    """(stage name, its variants in the given order): one stage per model for its non-compiling variants,
    then one per model for its compiling ones; empty ones left out."""
    variants = list(variants)
    models = list(dict.fromkeys(v.model for v in variants))
    out = [(m, [v for v in variants if v.model == m and not compiles(v)]) for m in models]
    out += [(f"{m} compiling", [v for v in variants if v.model == m and compiles(v)]) for m in models]
    return [(name, vs) for name, vs in out if vs]


def bench_program(models: list[str], variants: list[Any], pairs: list[tuple[Any, Any]], slices: int, *,
                  recheck: bool = False) -> list[Step]:
    """The ordered steps of one actor (module text). `pairs` are (parent, child) variants; a pair is decided
    in its child's stage from that stage's rounds, so a parent from another stage is timed there again
    (`time` covers it; its own row keeps its own stage's slices). A re-check program times in the reverse
    of the given order and has no pairs, checks or profile: it only times."""
    steps = [Step("load", (m,)) for m in models]
    order = list(reversed(variants)) if recheck else list(variants)
    for name, vs in stages(order):
        ids = tuple(v.variant_id for v in vs)
        own = [(p, c) for p, c in pairs if c.variant_id in ids] if not recheck else []
        extra = tuple(dict.fromkeys(p.variant_id for p, _ in own if p.variant_id not in ids))
        steps += [Step("prepare", (v, name), name, (v.variant_id,)) for v in vs]
        # a parent measured in an earlier invocation: prepared for its pairs only (no row of its own)
        steps += [Step("prepare", (p, name, True), name) for p in dict.fromkeys(p for p, _ in own)
                  if p.variant_id in extra and p.variant_id not in {v.variant_id for v in variants}]
        steps += [Step("time", (ids + extra, s, name), name, ids) for s in range(slices)]
        steps.append(Step("more", (ids + extra, name, slices), name, ids))
        if recheck:
            steps.append(Step("recheck_rows", (ids, name), name, ids))
            continue
        if own:
            steps.append(Step("pairs", (tuple((p.variant_id, c.variant_id) for p, c in own), name), name,
                              tuple(c.variant_id for _, c in own)))
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
