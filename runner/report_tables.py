"""The markdown sections of the report page: header, the brief's table, chosen model, what was tried,
decisions, all variants, training, environment. Each function returns the section's lines."""
from __future__ import annotations

import pandas as pd

from runner import report_trust
from runner.decisions import MAX_ACC_DROP_PTS, RULE, UNJUDGED, choose
from runner.report_format import (DASH, _distinct, _first_line, _flag, _missing, _num, _ok, _txt,
                                  ci_note, has_ci, markdown_table, with_ci)

BRIEF_ROWS = [  # the brief's table, in its order, with its own wording of each row
    ("B1", "MobileNetV3 / ShuffleNet (FP32)"),
    ("B2", "ResNet-18 CIFAR (FP32)"),
    ("O1", "B1 + FP16"),
    ("O2", "B1 + FP16 + compile"),
    ("O3", "B1 + channels_last"),
    ("D1", "Distilled student (FP16)"),
]


def _name(r: pd.Series) -> str:
    bid = "" if _missing(r.get("brief_id")) else f" ({r['brief_id']})"
    label = "" if _missing(r.get("label")) else f", {r['label']}"
    return f"`{r['variant_id']}`{bid}{label}"


def _chosen_section(summary: pd.DataFrame, decisions: pd.DataFrame, bar: float) -> list[str]:
    lines = ["## Chosen model", "", f"Rule: {RULE}.", ""]
    pick = choose(summary, bar)
    c = pick["chosen"]
    if c is None:
        lines.append(f"**No variant reached the {bar:.1f}% accuracy bar.**")
        m = pick["most_accurate"]
        if m is not None:
            lines.append(f"The most accurate one (the fastest of those tied on top-1; what `export` writes) is "
                         f"{_name(m)}: {_num(m['top1_pct'])}% top-1, p95 {_num(m['lat_p95_ms'], 3)} ms.")
        else:
            lines.append("No variant finished with an accuracy.")
        return lines + [""]
    lines += [f"**{_name(c)}**: {_num(c['top1_pct'])}% top-1 (bar {bar:.1f}%), latency mean "
              f"{with_ci(c, 'lat_mean_ms')} / p50 {with_ci(c, 'lat_p50_ms')} / p95 {with_ci(c, 'lat_p95_ms')} ms, "
              f"host-clock p95 {with_ci(c, 'host_p95_ms')} ms "
              f"(medians over {_txt(c['repeats'])} repeats), {_num(c['size_mb'])} MB.", ""]
    why = [f"It has the lowest host-clock p95 (what a caller waits, launch to result) among the ok variants "
           f"at or above {bar:.1f}% top-1."]
    r = pick["runner_up"]
    if r is not None:
        why.append(f"Runner-up: {_name(r)} with p95 {with_ci(r, 'lat_p95_ms')} ms "
                   f"and {_num(r['top1_pct'])}% top-1"
                   + (": **not distinguishable** from the chosen one (their 95% intervals of the ranked p95 "
                      "overlap), so either serves." if pick.get("runner_up_overlaps") else "."))
    f = pick["faster_under_bar"]
    if f is not None:
        why.append(f"Faster but under the bar: {_name(f)} with p95 {with_ci(f, 'lat_p95_ms')} ms "
                   f"and only {_num(f['top1_pct'])}% top-1.")
    d = decisions[decisions["variant_id"] == c["variant_id"]]
    if not d.empty:
        why.append(f"Against its parent it was judged: {d.iloc[0]['decision']}.")
    if c.get("flags"):
        why.append(f"Caution, flagged: {c['flags']}.")
    if not _missing(c.get("gpu_exclusive")) and not bool(c["gpu_exclusive"]):
        why.append("Caution: its GPU was not exclusive during the benchmark.")
    return lines + [" ".join(why), ""]


def _header(name: str, sweep: dict, results: pd.DataFrame) -> list[str]:
    lines = [f"# CIFAR-10 batch-1 latency report: {name}", ""]
    lines.append(_where_line(sweep, results))
    if sweep.get("interrupted"):
        lines.append("**Interrupted: this report holds what landed before the stop; the same command resumes.**")
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
    when = (f"Ran {sweep['started_at']} to {sweep.get('finished_at') or '?'}" if sweep.get("started_at")
            else "Ran (start time not recorded)")
    devices = _distinct(results["device"])
    cluster = sweep.get("cluster") or {}
    if (devices and all(d.startswith("cpu") for d in devices)) or (not devices and cluster.get("gpus") == 0):
        where = "CPU only: latencies are CPU timings, not GPU latency"
    else:
        # How many distinct GPUs (by UUID) of each name actually ran benchmarks.
        used = results.dropna(subset=["gpu_uuid"]).drop_duplicates("gpu_uuid")
        counts = used["gpu_name"].value_counts() if not used.empty else pd.Series(dtype=int)
        kinds = ", ".join(f"{n} x{c}" for n, c in counts.items()) or "GPU names not recorded"
        kinds += " ran benchmarks" if not used.empty else ""
        gpus = cluster.get("gpus", len(used) if not used.empty else "?")
        where = f"on {gpus} GPU(s), {cluster.get('nodes', '?')} node(s): {kinds}"
    return f"{when}, {where}; {_wall_text(sweep)}."


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


def _short(reason: str, limit: int = 48) -> str:
    """The reason cut at a word, for a table cell; the full one goes to a footnote."""
    return reason if len(reason) <= limit else reason[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def _brief_section(summary: pd.DataFrame) -> list[str]:
    rows, notes = [], []
    for bid, text in BRIEF_ROWS:
        hits = summary[summary["brief_id"] == bid]
        if hits.empty:
            rows.append([bid, text, "not in this sweep", DASH, DASH, DASH, DASH])
        for _, r in hits.iterrows():
            variant = f"{_txt(r.get('label'))} (`{r['variant_id']}`)"
            if r["status"] != "ok":
                notes.append(_first_line(r.get("error"), 2000))
                rows.append([bid, variant, f"{r['status']}: {_short(notes[-1])} [^why{len(notes)}]", DASH, DASH,
                             DASH, DASH])
            else:
                rows.append([bid, variant, _num(r["top1_pct"]), with_ci(r, "lat_mean_ms"),
                             with_ci(r, "lat_p95_ms"), _num(r["size_mb"]), r.get("flags") or DASH])
    head = ["## The brief's table", "",
            "Latencies are medians over repeats of each repeat's mean and p95 (batch 1)." + ci_note(summary), ""]
    return head + markdown_table(["ID", "Variant", "Acc. (%)", "Mean lat. (ms)", "p95 lat. (ms)", "Size (MB)", "Flags"],
                         rows) + [""] + [f"[^why{i}]: {note}" for i, note in enumerate(notes, 1)] + [""] * bool(notes)


def _decision_section(decisions: pd.DataFrame, paired: bool = False) -> list[str]:
    lines = ["## Decisions (keep / drop)", "",
             "Each variant is compared with its parent: the same model and settings with the last-applied "
             "optimisation undone (optimisations stack in the order precision, memory format, compile, CUDA "
             "graph, BN folding; fp32 / contiguous / no compile / no graph / no folding are the bases). "
             + report_trust.decision_note(paired), ""]
    if not paired:
        lines[-2] += (f" A variant is kept when its gain exceeds the noise and it loses at most {MAX_ACC_DROP_PTS} "
                      "points of top-1 accuracy; it is \"slower\" when it loses more than the noise, otherwise "
                      "it is dropped for no measurable gain (or for accuracy)."
                      + (" Where both carry 95% p50 intervals (in brackets) the intervals decide instead: kept "
                         "when the variant's lies wholly below its parent's, \"slower\" when wholly above, and "
                         "\"not distinguishable\" when they overlap." if has_ci(decisions, "p50_lo_ms") else ""))
    if decisions.empty:
        return lines + ["No variant finished, so nothing to decide.", ""]
    rows = []
    for _, d in decisions.iterrows():
        # round() + 0.0 so that a zero difference prints as +0.000, not -0.000
        gain = DASH if _missing(d["gain_ms"]) else \
            f"{round(d['gain_ms'], 3) + 0.0:+.3f} ({_num(round(d['gain_pct'], 1) + 0.0, 1)}%)"
        acc = DASH if _missing(d["acc_delta_pts"]) else f"{round(d['acc_delta_pts'], 2) + 0.0:+.2f}"
        rows.append([f"`{d['variant_id']}`", _txt(d["parent_id"]), _txt(d["change"]), with_ci(d, "parent_p50_ms"),
                     with_ci(d, "p50_ms"), gain, _num(d["noise_ms"], 4), acc, d["decision"]])
    return lines + markdown_table(["Variant", "Parent", "Axis changed", "Parent p50 (ms)", "p50 (ms)", "Gain ms (%)",
                           "Noise (ms)", "Acc. delta (pts)", "Decision"], rows) + [""]


def _all_section(summary: pd.DataFrame) -> list[str]:
    lines = ["## All variants", "",
             "Latency columns are medians over repeats; CV is the spread of p50 over repeats." + ci_note(summary), ""]
    if summary.empty:
        return lines + ["No rows in results.parquet.", ""]
    rows = []
    for _, r in summary.iterrows():
        cv = _num(r.get("p50_cv_pct"), 1) + (" unstable" if _flag(r.get("unstable")) == "yes" else "")
        rows.append([f"`{r['variant_id']}`", _txt(r["brief_id"]), _txt(r["model"]), _txt(r["precision"]),
                     _txt(r["memory_format"]), _txt(r["compile"]), _flag(r["cuda_graph"]), _flag(r["bn_fold"]),
                     r["status"], _num(r["top1_pct"]), _num(r["top1_drift_pts"]), with_ci(r, "lat_mean_ms"),
                     with_ci(r, "lat_p50_ms"), with_ci(r, "lat_p95_ms"), with_ci(r, "lat_p99_ms"),
                     with_ci(r, "host_p50_ms"), cv, _num(r["compile_s"], 1), _num(r["size_mb"]),
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


def _tried_section(decisions: pd.DataFrame) -> list[str]:
    """What was tried, per optimisation, and how often it paid: the decisions table folded by axis."""
    if decisions is None or decisions.empty or "axis" not in decisions:
        return []
    d = decisions.dropna(subset=["axis"])
    # A variant whose parent was not measured was not tried against anything: neither kept nor dropped
    d = d[(d["axis"].astype(str).str.len() > 0) & (d["decision"] != UNJUDGED)]
    if d.empty:
        return []
    rows = []
    for change, g in d.groupby(d["change"] if "change" in d else d["axis"], sort=True):
        kept = int((g["decision"] == "keep").sum())
        gains = pd.to_numeric(g["gain_pct"], errors="coerce").dropna()
        med, best = (f"{gains.median():+.1f}", f"{gains.max():+.1f}") if not gains.empty else (DASH, DASH)
        rows.append([change, len(g), kept, len(g) - kept, med, best])
    head = ["## What was tried", "",
            "Each optimisation, over every model and setting it was applied to (from the decisions below):", ""]
    return head + markdown_table(["Change", "Tried", "Kept", "Dropped / slower", "Median gain (%)", "Best gain (%)"],
                                 rows) + [""]
