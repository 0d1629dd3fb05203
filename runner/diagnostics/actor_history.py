"""Does what a long-lived benchmark process did before change its eager timings?

    python -m runner.diagnostics.actor_history [--iters 500] [--rounds 3] [--out history.json]

The engine keeps one benchmark actor per GPU for a whole phase (runner/engine/), so a variant is timed in a
process that has already prepared, captured, compiled and evaluated others. Earlier measurements
(docs/investigations/h200-contention/, docs/investigations/h200-inflation/) showed that training or profiling
in a process makes its later eager timings slower. This probe measures the remaining steps, in one process, on
one GPU:

    fresh       eager MobileNetV3-Small fp32, batch 1 (the noisiest row of a sweep, B1), in a new process
    capture     after preparing and capturing CUDA graphs of three other models
    evaluate    after an accuracy pass at batch 1000 (20 batches) through one of them
    compile     after torch.compile (inductor, default mode) of another model, called at batch 1 and 1000

Each stage times B1 `--rounds` times (`--iters` calls each, after 100 warm-up calls) and reports the median
of the rounds' p50. A reference process that only times B1 runs first and last (before / after), so the
host's drift over the probe is visible next to each stage's effect. The engine orders an actor's work by
what this shows (runner/engine/program.py). Untrained weights: they do not change latency.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import torch

STAGES = ("fresh", "capture", "evaluate", "compile")


def _b1(device):
    from runner.optimize import prepare
    from runner.train import build_model
    from variants import Variant

    v = Variant("mobilenet_v3_small_cifar", precision="fp32")
    fn, x, _ = prepare(build_model(v.model).to(device), v, device).callable_for(1)
    return fn, x


def _time(fn, x, iters: int, rounds: int) -> list[float]:
    from runner.bench import time_repeat

    return [float(np.median(time_repeat(fn, x, warmup=100, iters=iters).lat_ms)) for _ in range(rounds)]


def history(iters: int, rounds: int) -> dict[str, list[float]]:
    """The stages above in one process; stage -> the rounds' p50 (ms)."""
    from runner import evaluate
    from runner.optimize import prepare, strict_fp32
    from runner.train import build_model
    from variants import Variant

    strict_fp32()
    device = torch.device("cuda", 0)
    fn, x = _b1(device)
    out = {"fresh": _time(fn, x, iters, rounds)}
    held = []
    for arch in ("resnet18_cifar", "airbench_cifar", "shufflenet_v2_x1_0_cifar"):
        v = Variant(arch, precision="fp16", memory_format="channels_last", cuda_graph=True)
        held.append(prepare(build_model(arch).to(device), v, device).callable_for(1))
    out["capture"] = _time(fn, x, iters, rounds)
    v = Variant("resnet18_cifar", precision="fp16", memory_format="channels_last")
    prepared = prepare(build_model(v.model).to(device), v, device)
    eval_fn, _, _ = prepared.callable_for(1000)
    images = np.random.default_rng(0).integers(0, 255, (20_000, 3, 32, 32), dtype=np.uint8)
    evaluate.predict(eval_fn, images, device, 1000, prepared.cast_input)
    out["evaluate"] = _time(fn, x, iters, rounds)
    v = Variant("airbench_cifar", precision="fp16", memory_format="channels_last", compile="default")
    prepared = prepare(build_model(v.model).to(device), v, device)
    held += [prepared.callable_for(1), prepared.callable_for(1000)]
    out["compile"] = _time(fn, x, iters, rounds)
    return out


def reference(iters: int, rounds: int) -> list[float]:
    """B1 alone in a new process (the baseline the stages are compared with)."""
    code = ("import json, torch; from runner.diagnostics import actor_history as h; "
            f"fn, x = h._b1(torch.device('cuda', 0)); print(json.dumps(h._time(fn, x, {iters}, {rounds})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("actor_history needs a GPU")
        return 2
    before = reference(args.iters, args.rounds)
    stages = history(args.iters, args.rounds)
    after = reference(args.iters, args.rounds)
    base = float(np.median(before + after))
    print(f"B1 eager fp32 batch-1 p50, median of {args.rounds} rounds x {args.iters} calls (ms)")
    print(f"  reference process before  {np.median(before):.3f}   after {np.median(after):.3f}")
    for s in STAGES:
        p = float(np.median(stages[s]))
        print(f"  {s:<9} {p:.3f}  ({p / base:.2f}x the references)  rounds {', '.join(f'{v:.3f}' for v in stages[s])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"before": before, "after": after, **stages, "iters": args.iters,
                       "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
