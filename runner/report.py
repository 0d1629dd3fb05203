"""Markdown report of one sweep folder: the brief's table, the chosen model, keep/drop decisions, plots.

    python -m runner report runs/<sweep>        (the CLI calls `build_report(path)`)

Reads only what the sweep left on disk: `results.parquet` (one row per variant x repeat, see
`runner.results.RESULT_SCHEMA`), `training.parquet` and `sweep.json` (optional). Writes `report.md`,
`acc_vs_latency.png` and `latency_by_variant.png` into `out_dir` (default: the sweep folder).
Every number printed comes from those files or is a median / range / ratio of them; a missing value
prints as "—", never as a guess.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from runner import agreement, plots, report_latency, report_trust
from runner.plots import figure as _figure
from runner.results import RESULT_SCHEMA, TRAINING_SCHEMA, summarize
from runner.timeline import section as timeline_section

BRIEF_ROWS = [  # the brief's table, in its order, with its own wording of each row
    ("B1", "MobileNetV3 / ShuffleNet (FP32)"),
    ("B2", "ResNet-18 CIFAR (FP32)"),
    ("O1", "B1 + FP16"),
    ("O2", "B1 + FP16 + compile"),
    ("O3", "B1 + channels_last"),
    ("D1", "Distilled student (FP16)"),
]
# Optimisation axes from last-applied to first, with the value that means "not applied".
AXES = [("bn_fold", False), ("cuda_graph", False), ("compile", "none"), ("memory_format", "contiguous"),
        ("precision", "fp32")]
MAX_ACC_DROP_PTS = 0.5  # an optimisation may cost at most this much top-1 accuracy to be kept
DASH = "—"


# ---------------------------------------------------------------- small helpers

def _missing(x: Any) -> bool:
    if x is None or (isinstance(x, str) and not x.strip()):
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):  # lists / arrays are not missing
        return False


def _num(x: Any, nd: int = 2) -> str:
    return DASH if _missing(x) else f"{float(x):.{nd}f}"


def _txt(x: Any) -> str:
    return DASH if _missing(x) else str(x)


def _flag(x: Any) -> str:
    return DASH if _missing(x) else ("yes" if bool(x) else "no")


def _cell(x: Any) -> str:
    # A table cell must stay on one line and must not open a new column.
    return str(x).replace("\n", " ").replace("|", "\\|")


def markdown_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def _first_line(msg: Any, limit: int = 200) -> str:
    if _missing(msg) or not str(msg).strip():
        return "(no message)"
    line = str(msg).strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _distinct(series: pd.Series) -> list[str]:
    # Integer columns with nulls arrive as floats: print 200, not 200.0.
    vals = {int(v) if isinstance(v, float) and v.is_integer() else v for v in series if not _missing(v)}
    return sorted(str(v) for v in vals)


def _is_true(x: Any) -> bool:
    return not _missing(x) and bool(x)


# ---------------------------------------------------------------- inputs

def _read_parquet(path: Path, names: list[str]) -> pd.DataFrame:
    """The file as a frame with at least the schema's columns (an empty one when the file is missing)."""
    df = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=names)
    for n in names:  # files written by an older schema still report what they have
        if n not in df.columns:
            df[n] = None
    return df


def _read_sweep(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "sweep.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "ok"]


def _repeat_stats(results: pd.DataFrame) -> pd.DataFrame:
    """Per ok variant: the per-repeat p50 values, their min / max / CV %."""
    ok = _ok(results).dropna(subset=["lat_p50_ms"])
    if ok.empty:
        return pd.DataFrame(columns=["p50_values", "p50_min", "p50_max", "p50_cv_pct"])
    g = ok.groupby("variant_id", sort=False)["lat_p50_ms"]
    out = pd.DataFrame({"p50_values": g.apply(list), "p50_min": g.min(), "p50_max": g.max()})
    # CV over repeats needs at least two of them (sample std, ddof=1).
    out["p50_cv_pct"] = g.std() / g.mean() * 100
    return out


def _summary(results: pd.DataFrame) -> pd.DataFrame:
    """`results.summarize` plus the repeat spread of p50, one line per (variant, status)."""
    s = summarize(results)
    for col in ["top1_drift_pts", "lat_p99_ms", "host_p50_ms", "unstable", "compile_s", "size_mb",
                "gpu_exclusive", "repeats"]:
        if col not in s.columns:
            s[col] = None
    stats = _repeat_stats(results)
    return s.join(stats, on="variant_id") if not s.empty else s.assign(**{c: None for c in stats.columns})


# ---------------------------------------------------------------- decisions

def _axis_value(row: pd.Series, axis: str, base: Any) -> Any:
    v = row.get(axis)
    return base if _missing(v) else (bool(v) if isinstance(base, bool) else str(v))


def parent_key(row: pd.Series) -> tuple[tuple, str | None]:
    """(axes of the parent, name of the axis undone): the last-applied optimisation reset to its base.

    Optimisations apply in the order precision -> memory_format -> compile -> cuda_graph -> bn_fold, so the
    last one applied is the highest-order axis not at its base value. A variant with every axis at base is
    a root: its parent key is None.
    """
    axes = {a: _axis_value(row, a, b) for a, b in AXES}
    for axis, base in AXES:
        if axes[axis] != base:
            parent = dict(axes, **{axis: base})
            return (str(row["model"]), *[parent[a] for a, _ in AXES]), axis
    return None, None


def _own_key(row: pd.Series) -> tuple:
    return (str(row["model"]), *[_axis_value(row, a, b) for a, b in AXES])


def _p50_values(frame: pd.DataFrame) -> dict[str, list[float]]:
    """variant_id -> per-repeat p50. A summary (one line per variant) gives one value per variant."""
    ok = _ok(frame).dropna(subset=["lat_p50_ms"])
    return {vid: list(g["lat_p50_ms"]) for vid, g in ok.groupby("variant_id", sort=False)}


def _verdict(gain: float, noise: float, acc_drop: float) -> str:
    if not _missing(acc_drop) and acc_drop > MAX_ACC_DROP_PTS:
        return "drop (accuracy)"
    if _missing(noise) or _missing(gain):
        return "undecided (needs 2+ repeats)"
    if _missing(acc_drop):
        return "undecided (no accuracy)"
    if gain > noise:
        return "keep"
    if -gain > noise:  # measurably slower, not just noise
        return "slower"
    return "drop (no measurable gain)"


def decide(summary_or_results: pd.DataFrame) -> pd.DataFrame:
    """Keep / drop each ok variant against its parent (the same variant, last optimisation undone).

    gain_ms = median p50 of the parent - median p50 of the variant (over repeats);
    noise_ms = the larger of the two max-min ranges of p50 over repeats;
    keep when gain_ms > noise_ms and the accuracy drop is at most MAX_ACC_DROP_PTS points.
    Given per-repeat rows (RESULT_SCHEMA) the noise is measured; given a one-line-per-variant summary
    there is no spread to measure, so the decision says "undecided" rather than pretend the noise is 0.
    """
    cols = ["variant_id", "brief_id", "model", "parent_id", "axis", "change", "parent_p50_ms", "p50_ms",
            "gain_ms", "gain_pct", "noise_ms", "parent_top1_pct", "top1_pct", "acc_delta_pts", "decision"]
    frame = summary_or_results
    if frame.empty:
        return pd.DataFrame(columns=cols)
    ok = _ok(frame)
    firsts = ok.drop_duplicates("variant_id")
    by_key = {}
    for _, r in firsts.iterrows():
        by_key.setdefault(_own_key(r), r)  # first variant wins if two share every axis
    values = _p50_values(frame)
    rows = []
    for _, r in firsts.iterrows():
        key, axis = parent_key(r)
        row = {c: None for c in cols}
        row.update(variant_id=r["variant_id"], brief_id=r.get("brief_id"), model=r["model"], axis=axis,
                   top1_pct=r.get("top1_pct"))
        v = values.get(r["variant_id"], [])
        row["p50_ms"] = pd.Series(v).median() if v else None
        parent = by_key.get(key) if key else None
        if key is None:
            row["decision"] = "baseline (no parent)"
        elif parent is None:
            row["change"] = f"{axis}: {_axis_value(r, axis, dict(AXES)[axis])}"
            row["decision"] = "no parent measured"
        else:
            row.update(_compare(r, parent, axis, v, values.get(parent["variant_id"], [])))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _compare(r: pd.Series, parent: pd.Series, axis: str, v: list[float], pv: list[float]) -> dict:
    base = dict(AXES)[axis]
    out: dict[str, Any] = {"parent_id": parent["variant_id"], "parent_top1_pct": parent.get("top1_pct"),
                           "change": f"{axis}: {_axis_value(parent, axis, base)} -> {_axis_value(r, axis, base)}"}
    pm = pd.Series(pv).median() if pv else None
    vm = pd.Series(v).median() if v else None
    out["parent_p50_ms"] = pm
    gain = None if _missing(pm) or _missing(vm) else pm - vm
    out["gain_ms"] = gain
    out["gain_pct"] = None if gain is None or not pm else gain / pm * 100
    # With one value on either side there is no spread, so no noise estimate.
    noise = max(max(v) - min(v), max(pv) - min(pv)) if len(v) > 1 and len(pv) > 1 else None
    out["noise_ms"] = noise
    pt, vt = parent.get("top1_pct"), r.get("top1_pct")
    drop = None if _missing(pt) or _missing(vt) else float(pt) - float(vt)
    out["acc_delta_pts"] = None if drop is None else -drop
    out["decision"] = _verdict(gain, noise, drop)
    return out


# ---------------------------------------------------------------- the chosen model

def choose(summary: pd.DataFrame, bar_pct: float) -> dict[str, Any]:
    """The ok variant with top-1 >= bar_pct that a caller waits least for: the lowest host-clock p95
    (CUDA-event p95 where no host time exists), with what it beat."""
    ok = summary[(summary["status"] == "ok")].dropna(subset=["lat_p95_ms"])
    ok = ok.assign(_rank=ok.apply(agreement.rank_latency, axis=1)) if not ok.empty else ok.assign(_rank=[])
    passing = ok[ok["top1_pct"] >= bar_pct].sort_values("_rank", kind="stable")
    out: dict[str, Any] = {"chosen": None, "runner_up": None, "faster_under_bar": None, "most_accurate": None}
    if not ok.dropna(subset=["top1_pct"]).empty:
        out["most_accurate"] = ok.sort_values("top1_pct", ascending=False, kind="stable").iloc[0]
    if passing.empty:
        return out
    chosen = passing.iloc[0]
    out["chosen"] = chosen
    out["runner_up"] = passing.iloc[1] if len(passing) > 1 else None
    under = ok[(ok["top1_pct"] < bar_pct) & (ok["_rank"] < chosen["_rank"])]
    if not under.empty:
        out["faster_under_bar"] = under.sort_values("_rank", kind="stable").iloc[0]
    return out


def _name(r: pd.Series) -> str:
    bid = "" if _missing(r.get("brief_id")) else f" ({r['brief_id']})"
    label = "" if _missing(r.get("label")) else f", {r['label']}"
    return f"`{r['variant_id']}`{bid}{label}"


def _chosen_section(summary: pd.DataFrame, decisions: pd.DataFrame, bar: float) -> list[str]:
    lines = ["## Chosen model", ""]
    pick = choose(summary, bar)
    c = pick["chosen"]
    if c is None:
        lines.append(f"**No variant reached the {bar:.1f}% accuracy bar.**")
        m = pick["most_accurate"]
        if m is not None:
            lines.append(f"The most accurate one is {_name(m)}: {_num(m['top1_pct'])}% top-1, "
                         f"p95 {_num(m['lat_p95_ms'], 3)} ms.")
        else:
            lines.append("No variant finished with an accuracy.")
        return lines + [""]
    lines += [f"**{_name(c)}**: {_num(c['top1_pct'])}% top-1 (bar {bar:.1f}%), latency mean "
              f"{_num(c['lat_mean_ms'], 3)} / p50 {_num(c['lat_p50_ms'], 3)} / p95 {_num(c['lat_p95_ms'], 3)} ms, "
              f"host-clock p95 {_num(c.get('host_p95_ms'), 3)} ms "
              f"(medians over {_txt(c['repeats'])} repeats), {_num(c['size_mb'])} MB.", ""]
    why = [f"It has the lowest host-clock p95 (what a caller waits, launch to result) among the ok variants "
           f"at or above {bar:.1f}% top-1."]
    r = pick["runner_up"]
    if r is not None:
        why.append(f"Runner-up: {_name(r)} with p95 {_num(r['lat_p95_ms'], 3)} ms "
                   f"and {_num(r['top1_pct'])}% top-1.")
    f = pick["faster_under_bar"]
    if f is not None:
        why.append(f"Faster but under the bar: {_name(f)} with p95 {_num(f['lat_p95_ms'], 3)} ms "
                   f"and only {_num(f['top1_pct'])}% top-1.")
    d = decisions[decisions["variant_id"] == c["variant_id"]]
    if not d.empty:
        why.append(f"Against its parent it was judged: {d.iloc[0]['decision']}.")
    if c.get("flags"):
        why.append(f"Caution, flagged: {c['flags']}.")
    if not _missing(c.get("gpu_exclusive")) and not bool(c["gpu_exclusive"]):
        why.append("Caution: its GPU was not exclusive during the benchmark.")
    return lines + [" ".join(why), ""]


# ---------------------------------------------------------------- sections

def _header(name: str, sweep: dict, results: pd.DataFrame) -> list[str]:
    lines = [f"# CIFAR-10 batch-1 latency report: {name}", ""]
    lines.append(_where_line(sweep, results))
    source = sweep.get("data_source") or ", ".join(_distinct(results["data_source"])) or "unknown"
    lines.append(f"Data: {source}.")
    if "jpeg" in source.lower() or "jpg" in source.lower():
        lines.append("Accuracy is measured on the JPEG copy of the test set: "
                     "a proxy for the official CIFAR-10 test set, not the official number.")
    if sweep.get("shortened"):
        note = sweep.get("shortened_note") or "a shortened run"
        lines.append(f"**Warning: shortened run ({note}). Accuracies are not those of a full training.**")
    return lines + [""]


def _where_line(sweep: dict, results: pd.DataFrame) -> str:
    when = ""
    if sweep.get("started_at"):
        when = f"Ran {sweep['started_at']} to {sweep.get('finished_at') or '?'}"
    else:
        when = "Ran (start time not recorded)"
    wall_txt = _wall_text(sweep)
    devices = _distinct(results["device"])
    cluster = sweep.get("cluster") or {}
    on_cpu = (devices and all(d.startswith("cpu") for d in devices)) or \
        (not devices and cluster.get("gpus") == 0)
    if on_cpu:
        where = "CPU only: latencies are CPU timings, not GPU latency"
    else:
        # How many distinct GPUs (by UUID) of each name actually ran benchmarks.
        used = results.dropna(subset=["gpu_uuid"]).drop_duplicates("gpu_uuid")
        counts = used["gpu_name"].value_counts() if not used.empty else pd.Series(dtype=int)
        kinds = ", ".join(f"{n} x{c}" for n, c in counts.items()) or "GPU names not recorded"
        kinds += " ran benchmarks" if not used.empty else ""
        gpus = cluster.get("gpus", len(used) if not used.empty else "?")
        nodes = cluster.get("nodes", "?")
        where = f"on {gpus} GPU(s), {nodes} node(s): {kinds}"
    return f"{when}, {where}; {wall_txt}."


def _wall_text(sweep: dict) -> str:
    """The whole sweep's wall time: a resumed sweep adds up every invocation (sweep.json previous_runs)."""
    walls = [r.get("wall_s") for r in sweep.get("previous_runs", [])] + [sweep.get("wall_s")]
    walls = [float(w) for w in walls if not _missing(w)]
    if not walls:
        return "wall time not recorded"
    total = sum(walls)
    text = f"wall time {total:.0f} s ({total / 60:.1f} min)"
    if len(walls) > 1:
        text += f" over {len(walls)} invocations (this one {walls[-1]:.0f} s)"
    return text


def _brief_section(summary: pd.DataFrame) -> list[str]:
    rows = []
    for bid, text in BRIEF_ROWS:
        hits = summary[summary["brief_id"] == bid]
        if hits.empty:
            rows.append([bid, text, "not in this sweep", DASH, DASH, DASH, DASH])
        for _, r in hits.iterrows():
            variant = f"{_txt(r.get('label'))} (`{r['variant_id']}`)"
            if r["status"] != "ok":
                rows.append([bid, variant, f"{r['status']}: {_first_line(r.get('error'), 80)}", DASH, DASH, DASH,
                             DASH])
            else:
                rows.append([bid, variant, _num(r["top1_pct"]), _num(r["lat_mean_ms"], 3),
                             _num(r["lat_p95_ms"], 3), _num(r["size_mb"]), r.get("flags") or DASH])
    head = ["## The brief's table", "",
            "Latencies are medians over repeats of each repeat's mean and p95 (batch 1).", ""]
    return head + markdown_table(["ID", "Variant", "Acc. (%)", "Mean lat. (ms)", "p95 lat. (ms)", "Size (MB)", "Flags"],
                         rows) + [""]


def _decision_section(decisions: pd.DataFrame, paired: bool = False) -> list[str]:
    lines = ["## Decisions (keep / drop)", "",
             "Each variant is compared with its parent: the same model and settings with the last-applied "
             "optimisation undone (optimisations stack in the order precision, memory format, compile, CUDA "
             "graph, BN folding; fp32 / contiguous / no compile / no graph / no folding are the bases). "
             + report_trust.decision_note(paired), ""]
    if not paired:
        lines[-2] += (f" A variant is kept when its gain exceeds the noise and it loses at most {MAX_ACC_DROP_PTS} "
                      "points of top-1 accuracy; it is \"slower\" when it loses more than the noise, otherwise "
                      "it is dropped for no measurable gain (or for accuracy).")
    if decisions.empty:
        return lines + ["No variant finished, so nothing to decide.", ""]
    rows = []
    for _, d in decisions.iterrows():
        # round() + 0.0 so that a zero difference prints as +0.000, not -0.000
        gain = DASH if _missing(d["gain_ms"]) else \
            f"{round(d['gain_ms'], 3) + 0.0:+.3f} ({_num(round(d['gain_pct'], 1) + 0.0, 1)}%)"
        acc = DASH if _missing(d["acc_delta_pts"]) else f"{round(d['acc_delta_pts'], 2) + 0.0:+.2f}"
        rows.append([f"`{d['variant_id']}`", _txt(d["parent_id"]), _txt(d["change"]), _num(d["parent_p50_ms"], 3),
                     _num(d["p50_ms"], 3), gain, _num(d["noise_ms"], 4), acc, d["decision"]])
    return lines + markdown_table(["Variant", "Parent", "Axis changed", "Parent p50 (ms)", "p50 (ms)", "Gain ms (%)",
                           "Noise (ms)", "Acc. delta (pts)", "Decision"], rows) + [""]


def _all_section(summary: pd.DataFrame) -> list[str]:
    lines = ["## All variants", "",
             "Latency columns are medians over repeats; CV is the spread of p50 over repeats.", ""]
    if summary.empty:
        return lines + ["No rows in results.parquet.", ""]
    rows = []
    for _, r in summary.iterrows():
        cv = _num(r.get("p50_cv_pct"), 1) + (" unstable" if _is_true(r.get("unstable")) else "")
        rows.append([f"`{r['variant_id']}`", _txt(r["brief_id"]), _txt(r["model"]), _txt(r["precision"]),
                     _txt(r["memory_format"]), _txt(r["compile"]), _flag(r["cuda_graph"]), _flag(r["bn_fold"]),
                     r["status"], _num(r["top1_pct"]), _num(r["top1_drift_pts"]), _num(r["lat_mean_ms"], 3),
                     _num(r["lat_p50_ms"], 3), _num(r["lat_p95_ms"], 3), _num(r["lat_p99_ms"], 3),
                     _num(r["host_p50_ms"], 3), cv, _num(r["compile_s"], 1), _num(r["size_mb"]),
                     _flag(r["gpu_exclusive"]) if r["status"] == "ok" else DASH, r.get("flags") or DASH])
    lines += markdown_table(["ID", "Brief", "Model", "Precision", "Memory format", "Compile", "Graph", "Fold", "Status",
                     "Top-1 (%)", "Drift (pts)", "Mean (ms)", "p50 (ms)", "p95 (ms)", "p99 (ms)",
                     "Host p50 (ms)", "p50 CV (%)", "Compile (s)", "Size (MB)", "GPU exclusive", "Flags"], rows)
    failed = summary[summary["status"] != "ok"]
    if not failed.empty:
        lines += ["", "Errors and skipped variants:", ""]
        lines += [f"- `{r['variant_id']}` ({r['status']}): {_first_line(r.get('error'))}"
                  for _, r in failed.iterrows()]
    return lines + [""]


def _training_section(training: pd.DataFrame) -> list[str]:
    lines = ["## Training", ""]
    if training.empty:
        return lines + ["No rows in training.parquet.", ""]
    # The last epoch of each model carries its final accuracy and total time.
    last = training.sort_values("epoch", kind="stable", na_position="first").groupby("model", sort=False).tail(1)
    rows = []
    for _, r in last.iterrows():
        status = _txt(r["status"])
        if status not in ("ok", DASH):
            status += f": {_first_line(r.get('error'), 80)}"
        rows.append([_txt(r["model"]), _txt(r["arch"]), _txt(r["teacher"]),
                     f"{_txt(r['epoch'])}/{_txt(r['epochs'])}", _num(r["train_s"], 1),
                     _num(r["train_img_per_s"], 0), _num(r["top1_pct"]), status])
    return lines + markdown_table(["Model", "Arch", "Teacher", "Epochs", "Train (s)", "img/s", "Top-1 (%)", "Status"],
                          rows) + [""]


def _env_section(results: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    lines = ["## Environment", ""]
    for col in ["gpu_name", "driver_version", "torch_version", "cuda_version", "cudnn_version", "ray_version",
                "git_commit", "hostname"]:
        lines.append(f"- {col}: {', '.join(_distinct(results[col])) or DASH}")
    lines.append(f"- distinct GPU UUIDs: {len(_distinct(results['gpu_uuid']))}")
    ok = _ok(results)
    reps = summary.loc[summary["status"] == "ok", "repeats"] if not summary.empty else pd.Series(dtype=int)
    timers = _distinct(ok["timer"])
    lines += ["", "Measurement protocol (from the rows):", "",
              f"- warm-up iterations: {', '.join(_distinct(ok['warmup'])) or DASH}; "
              f"timed iterations per repeat: {', '.join(_distinct(ok['iters'])) or DASH}",
              f"- repeats per variant: {', '.join(_distinct(reps)) or DASH}; latencies are medians over repeats",
              f"- timer: {', '.join(timers) or DASH} "
              + ("(CUDA events: GPU time; the host clock is in the host_* columns)" if "cuda_event" in timers
                 else "(host clock around launch..synchronize)" if timers else ""), ""]
    return lines


# ---------------------------------------------------------------- plots

def _plots(summary: pd.DataFrame, chosen: pd.Series | None, bar: float, out_dir: Path, cpu: bool) -> list[str]:
    ok = summary[summary["status"] == "ok"].dropna(subset=["lat_p95_ms", "top1_pct"])
    if ok.empty:
        return ["## Plots", "", "No plots: no variant finished with a latency and an accuracy.", ""]
    plots.acc_vs_latency(ok, chosen, bar, out_dir / "acc_vs_latency.png", cpu=cpu)
    _plot_latency_by_variant(ok, out_dir / "latency_by_variant.png")
    return ["## Plots", "", "![Accuracy vs p95 latency](acc_vs_latency.png)", "",
            "![p50 latency by variant, min..max over repeats](latency_by_variant.png)", ""]


def _plot_latency_by_variant(ok: pd.DataFrame, path: Path) -> None:
    ok = ok.dropna(subset=["lat_p50_ms"]).sort_values("lat_p50_ms", ascending=False, kind="stable")
    fig = _figure((8, 1.5 + 0.35 * len(ok)))
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
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- entry point

def _tried_section(decisions: pd.DataFrame) -> list[str]:
    """What was tried, per optimisation, and how often it paid: the decisions table folded by axis."""
    if decisions is None or decisions.empty or "axis" not in decisions:
        return []
    d = decisions.dropna(subset=["axis"])
    d = d[d["axis"].astype(str).str.len() > 0]
    if d.empty:
        return []
    out = ["## What was tried", "",
           "Each optimisation, over every model and setting it was applied to (from the decisions below):", "",
           "| Change | Tried | Kept | Dropped / slower | Median gain (%) | Best gain (%) |", "|---|---|---|---|---|---|"]
    for change, g in d.groupby(d["change"] if "change" in d else d["axis"], sort=True):
        kept = int((g["decision"] == "keep").sum())
        gains = pd.to_numeric(g["gain_pct"], errors="coerce").dropna()
        med = f"{gains.median():+.1f}" if not gains.empty else DASH
        best = f"{gains.max():+.1f}" if not gains.empty else DASH
        out.append(f"| {change} | {len(g)} | {kept} | {len(g) - kept} | {med} | {best} |")
    return out + [""]


def build_report(run_dir: str | Path, *, out_dir: str | Path | None = None) -> Path:
    """Write report.md and its plots for the sweep folder `run_dir`; return the path of report.md."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = _read_sweep(run_dir)
    results = _read_parquet(run_dir / "results.parquet", RESULT_SCHEMA.names)
    training = _read_parquet(run_dir / "training.parquet", TRAINING_SCHEMA.names)
    summary = _summary(results)
    pair_rows = report_trust.read(run_dir, "pairs")
    paired = not pair_rows.empty
    decisions = report_trust.paired_decisions(summary, pair_rows) if paired else decide(results)
    agree = agreement.agreement(summary, report_trust.read(run_dir, "rechecks"))
    bad = report_trust.disagreeing(agree)
    if not summary.empty:
        summary["flags"] = summary.apply(lambda r: agreement.flags(r, bad), axis=1)
    on_gpu = bool((results["device"] == "cuda").any()) if "device" in results else False
    bar = float(sweep.get("accuracy_bar_pct", 85.0))
    name = sweep.get("name") or next(iter(_distinct(results["sweep"])), None) or run_dir.name

    lines = _header(name, sweep, results)
    if _ok(results).empty:
        lines += ["**Nothing finished: no variant has status ok"
                  + (f" ({len(summary)} variant(s) errored or were skipped)." if len(summary) else ".") + "**",
                  ""]
    lines += _brief_section(summary)
    lines += _chosen_section(summary, decisions, bar)
    lines += report_trust.recheck_section(agree, on_gpu)
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
    path.write_text("\n".join(lines))
    return path
