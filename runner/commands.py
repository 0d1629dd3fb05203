"""The sweep's own verbs: sweep, list, report, train (the argument definitions are in runner/cli.py).

Each `cmd_*` takes the parsed arguments and returns the exit code; errors a user can fix (a wrong sweep
file, missing data) are raised as SpecError / DataError and turned into messages by runner/cli.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

from variants import load_sweep


def _load(args):
    """Load the sweep file; --max-epochs / --bench-iters cap (never raise) epochs and timed iterations."""
    return load_sweep(args.config).capped(max_epochs=getattr(args, "max_epochs", None),
                                          bench_iters=getattr(args, "bench_iters", None))


def _shortened_note(spec, args) -> str:
    parts = []
    if args.max_epochs:
        parts.append(f"epochs capped at {args.max_epochs} ("
                     + ", ".join(f"{m.key} {m.recipe.epochs}" for m in spec.models) + ")")
    if args.bench_iters:
        parts.append(f"benchmark capped at {spec.bench.warmup} warm-up / {spec.bench.iters} timed iterations")
    return ("shortened run: " + "; ".join(parts)) if parts else ""


def _data(spec, args, run_dir: Path):
    """--data; else the data run_dir's sweep used while the sweep file still names what it named then (a
    resume or `train` beside an image-folder sweep needs no --data again, nor a download); else the file's."""
    from runner.data import load, recorded
    rec = None if args.data else recorded(run_dir)
    if rec and rec.get("sweep_file") == spec.data.source:
        print(f"data: {rec['source']}, as the sweep in {run_dir} used (sweep.json); --data to change it")
        return load(rec["source"], rec.get("root"))
    return load(args.data or spec.data.source, spec.data.root)


def cmd_sweep(args) -> int:
    from runner import guard
    from runner.engine.control import STOPPED_EXIT, Stopped
    from runner.sweep import run_sweep

    spec = _load(args)
    guard.probe_address(args.address)  # a cluster that is not there fails here, in seconds
    run_dir = guard.run_folder(args.out, spec.name)
    note = _shortened_note(spec, args)
    print(f"sweep '{spec.name}': {len(spec.models)} model(s) to train, {len(spec.variants)} variant(s) to measure")
    print(f"loading data ({args.data or spec.data.source}; decoded once, then read from the cache)", flush=True)
    data = _data(spec, args, run_dir)  # the first decode of an image folder takes a minute: say so before it
    print(f"data: {data.source}")
    with guard.sweep_lock(run_dir):  # one sweep per run folder; Ctrl-C / SIGTERM shut down cleanly
        try:
            report = run_sweep(spec, data, run_dir, address=args.address, shortened_note=note,
                               fresh=getattr(args, "fresh", False), stop_after=getattr(args, "stop_after", None))
        except Stopped as e:
            print(f"\n{e}; every task that ran has landed in {run_dir}. Run the same command again (without "
                  f"--fresh) to go on; `python -m runner report {run_dir}` shows what is there now. "
                  f"(exit {STOPPED_EXIT})")
            return STOPPED_EXIT
    print(f"\nreport:   {report}\nresults:  {run_dir / 'results.parquet'}\ntraining: {run_dir / 'training.parquet'}"
          f"\ntable:    {run_dir / 'final_table.csv'}")
    failed = failed_run(run_dir)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
    return 1 if failed else 0


def failed_run(run_dir: Path) -> str | None:
    """Why a finished sweep counts as failed (exit 1): rows landed, none ok and at least one an error (a
    sweep of skips only, e.g. GPU variants on a CPU, is not a failure of the run)."""
    import pandas as pd

    from runner.schema import read

    path = run_dir / "results.parquet"
    status = read(path, columns=["status"])["status"] if path.exists() else pd.Series(dtype=str)
    if (status == "ok").any() or not (status == "error").any():
        return None
    return f"no variant ended ok: every task failed ({int((status == 'error').sum())} error row(s); see {run_dir})"


def cmd_list(args) -> int:
    spec = _load(args)
    print(f"sweep '{spec.name}' from {spec.source_file}")
    print("\nmodels:")
    for m in spec.models:
        r = m.recipe
        extra = f"  distilled from {m.teacher}" if m.teacher else ""
        print(f"  {m.key:<16} {m.arch:<26} epochs {r.epochs:<3} batch {r.batch_size:<4} lr {r.lr:<6} "
              f"amp {r.amp}{extra}")
    print(f"\nvariants ({len(spec.variants)}):")
    print(f"  {'id':<5} {'variant_id':<44} {'precision':<9} {'memory':<14} {'compile':<27} graph fold  tta")
    for v in spec.variants:
        print(f"  {v.brief_id:<5} {v.variant_id:<44} {v.precision:<9} {v.memory_format:<14} {v.compile:<27} "
              f"{'on' if v.cuda_graph else 'off':<5} {'on' if v.bn_fold else 'off':<5} {v.tta}")
    return 0


def cmd_report(args) -> int:
    from runner.report import build_report
    from runner.results import SchemaError, merge

    run_dir = Path(args.run_dir)
    if not (run_dir / "results").is_dir() and not (run_dir / "results.parquet").exists():
        print(f"error: {run_dir} holds no results/ folder or results.parquet (is it a sweep folder?)",
              file=sys.stderr)
        return 2
    skipped: list[Path] = []
    if (run_dir / "results").is_dir():
        merge(run_dir, skipped)  # a damaged part file is left out and named, the rest is merged
    try:
        report = build_report(run_dir)
    except SchemaError:
        raise  # one line naming the file, from runner/cli.py
    except (OSError, ValueError) as e:  # a damaged merged file or sweep.json (ArrowInvalid is a ValueError)
        print(f"error: cannot build the report from {run_dir}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(report)
    if skipped:
        print(f"note: built without {len(skipped)} damaged file(s): {', '.join(map(str, skipped))}",
              file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    import torch

    from runner import files
    from runner.train import train

    spec = _load(args)
    keys = [m.key for m in spec.models]
    if args.model not in keys:
        print(f"error: no model '{args.model}' in {args.config}; models there: {', '.join(keys)}", file=sys.stderr)
        return 2
    m = spec.model(args.model)
    if m.teacher:
        print(f"error: '{m.key}' is distilled from '{m.teacher}'; run it inside a sweep", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = train(m, _data(spec, args, Path(args.out) / spec.name), device)
    # Beside (never over) the sweep's own checkpoints/<model>.pt, which a sweep reuses on resume and its rows
    # were measured from.
    out = Path(args.out) / spec.name / "train" / f"{m.key}.pt"
    files.write_via_memory(out, lambda f: torch.save(ckpt, f))
    print(f"{m.key}: top1 {ckpt['top1_pct']:.2f}% (fp32) in {ckpt['train_s']:.1f}s "
          f"({ckpt['train_img_per_s']:,.0f} img/s on {device}); checkpoint {out}")
    return 0
