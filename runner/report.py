"""Markdown report of one sweep folder: the brief's table, the chosen model, keep/drop decisions, plots.

    python -m runner report runs/<sweep>        (the CLI calls `build_report(path)`)

Reads only what the sweep left on disk: `results.parquet` (one row per variant x repeat, see
`runner.results.RESULT_SCHEMA`), `training.parquet` and `sweep.json` (optional). Writes `report.md`,
`acc_vs_latency.png` and `latency_by_variant.png` into `out_dir` (default: the sweep folder).
Every number printed comes from those files or is a median / range / ratio of them; a missing value
prints as "—", never as a guess.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from runner import agreement, files, host_rounds, intervals, plots, report_latency, report_trust
from runner.decisions import choose, decide
from runner.report_format import _distinct, _missing, _ok
from runner.report_tables import (_all_section, _brief_section, _chosen_section, _decision_section, _env_section,
                                  _header, _training_section, _tried_section)
from runner.results import RESULT_SCHEMA, TRAINING_SCHEMA, cv_pct, summarize
from runner.schema import read
from runner.timeline import section as timeline_section
from variants.spec import ACCURACY_BAR_PCT


def _read_parquet(path: Path, schema: pa.Schema) -> pd.DataFrame:
    """The file (of this code's schema version, else SchemaError), or an empty frame when it is missing."""
    return read(path) if path.exists() else schema.empty_table().to_pandas()


def _summary(results: pd.DataFrame) -> pd.DataFrame:
    """`results.summarize` plus the spread of p50 over repeats (min / max / CV %), one line per (variant, status)."""
    s = summarize(results)
    ok = _ok(results).dropna(subset=["lat_p50_ms"])
    if ok.empty:
        stats = pd.DataFrame(columns=["p50_min", "p50_max", "p50_cv_pct"])
    else:
        g = ok.groupby("variant_id", sort=False)["lat_p50_ms"]
        # CV over repeats needs at least two of them: with one, no spread is known (NaN prints as a dash).
        stats = pd.DataFrame({"p50_min": g.min(), "p50_max": g.max(),
                              "p50_cv_pct": g.apply(lambda v: cv_pct(v) if len(v) > 1 else float("nan"))})
    return s.join(stats, on="variant_id") if not s.empty else s.assign(**{c: None for c in stats.columns})


# ---------------------------------------------------------------- plots

def _plots(summary: pd.DataFrame, chosen: pd.Series | None, bar: float, out_dir: Path, cpu: bool) -> list[str]:
    ok = summary[summary["status"] == "ok"].dropna(subset=["lat_p95_ms", "top1_pct"])
    if ok.empty:
        return ["## Plots", "", "No plots: no variant finished with a latency and an accuracy.", ""]
    plots.acc_vs_latency(ok, chosen, bar, out_dir / "acc_vs_latency.png", cpu=cpu)  # shown with the front
    ok = ok.dropna(subset=["lat_p50_ms"]).sort_values("lat_p50_ms", ascending=False, kind="stable")
    fig = plots.figure((8, 1.5 + 0.35 * len(ok)))
    ax = fig.add_subplot()
    med = ok["lat_p50_ms"].astype(float)
    lo = (med - ok["p50_min"].astype(float)).fillna(0).clip(lower=0)
    hi = (ok["p50_max"].astype(float) - med).fillna(0).clip(lower=0)
    names = [f"{v} ({b})" if not _missing(b) else str(v) for v, b in zip(ok["variant_id"], ok["brief_id"])]
    ax.barh(names, med, xerr=[lo, hi], capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xlabel("p50 latency, batch 1 (ms): median over repeats, bars min..max")
    ax.set_title("Latency by variant (fastest at the top)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    files.write_figure(fig, out_dir / "latency_by_variant.png")
    return ["## Plots", "", "![p50 latency by variant, min..max over repeats](latency_by_variant.png)", ""]


# ---------------------------------------------------------------- entry point

def build_report(run_dir: str | Path, *, out_dir: str | Path | None = None) -> Path:
    """Write report.md and its plots for the sweep folder `run_dir`; return the path of report.md."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = files.read_json(run_dir / "sweep.json") if (run_dir / "sweep.json").exists() else {}
    results = _read_parquet(run_dir / "results.parquet", RESULT_SCHEMA)
    training = _read_parquet(run_dir / "training.parquet", TRAINING_SCHEMA)
    summary = intervals.across_processes(_summary(results), report_trust.read(run_dir, "twins"))
    pair_rows = report_trust.read(run_dir, "pairs")
    paired = not pair_rows.empty
    decisions = report_trust.paired_decisions(summary, pair_rows) if paired else decide(results)
    agree = agreement.agreement(summary, report_trust.read(run_dir, "rechecks"))
    bad = set(agree.loc[~agree["within"].astype(bool), "variant_id"]) if not agree.empty else set()
    if not summary.empty:
        summary["flags"] = summary.apply(lambda r: agreement.flags(r, bad), axis=1)
    on_gpu = bool((results["device"] == "cuda").any())
    bar = float(sweep.get("accuracy_bar_pct", ACCURACY_BAR_PCT))
    name = sweep.get("name") or next(iter(_distinct(results["sweep"])), None) or run_dir.name

    lines = _header(name, sweep, results)
    if _ok(results).empty:
        lines += ["**Nothing finished: no variant has status ok"
                  + (f" ({len(summary)} variant(s) errored or were skipped)." if len(summary) else ".") + "**",
                  ""]
    lines += _brief_section(summary)
    lines += _chosen_section(summary, decisions, bar)
    lines += report_trust.recheck_section(agree, on_gpu)
    cv_bound = float((sweep.get("config") or {}).get("bench", {}).get("cv_flag_pct", 3.0))
    lines += host_rounds.section_lines(results, cv_bound)
    lines += report_latency.pareto_section(summary, out_dir, on_gpu)
    lines += _tried_section(decisions)
    lines += _decision_section(decisions, paired)
    lines += _all_section(summary)
    lines += report_latency.breakdown_section(summary)
    lines += report_trust.checks_section(summary)
    lines += _training_section(training)
    cpu_rows = not _ok(results).empty and (_ok(results)["device"] == "cpu").all()
    lines += _plots(summary, choose(summary, bar)["chosen"], bar, out_dir, cpu=bool(cpu_rows))
    lines += timeline_section(run_dir, out_dir)
    lines += _env_section(results, summary)
    path = out_dir / "report.md"
    files.write_text(path, "\n".join(lines))
    return path
