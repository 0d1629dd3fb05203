"""Report sections that say how far the numbers can be trusted: paired decisions, re-check agreement, flags.

Reads `pairs.parquet` and `rechecks.parquet` beside results.parquet (runner/engine/bench_phase.py writes them). A
sweep without pairs (no variant's parent in it) gets the unpaired decisions; one without a re-check
(`bench.recheck: -1`, or stopped before it) no agreement table.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa

from runner import agreement, pairs
from runner.report_format import DASH, _missing, markdown_table, with_ci
from runner.schema import PAIR_SCHEMA, RECHECK_SCHEMA, SchemaError
from runner.schema import read as read_file


def read(run_dir: Path, name: str) -> pd.DataFrame:
    schema = {"pairs": PAIR_SCHEMA, "rechecks": RECHECK_SCHEMA, "twins": RECHECK_SCHEMA}[name]
    path = run_dir / f"{name}.parquet"
    if not path.exists():
        return schema.empty_table().to_pandas()
    try:
        return read_file(path)
    except SchemaError:
        raise  # another code's file: said by name, never a section left out in silence
    except (pa.ArrowException, OSError, ValueError):  # a damaged merged file: the report goes on without it
        return schema.empty_table().to_pandas()


def paired_decisions(summary: pd.DataFrame, pair_rows: pd.DataFrame) -> pd.DataFrame:
    """The report's decision table, from paired rounds (runner/pairs.verdict) instead of repeats."""
    cols = ["variant_id", "brief_id", "model", "parent_id", "axis", "change", "parent_p50_ms", "p50_ms",
            "gain_ms", "gain_pct", "noise_ms", "sign_p", "pair_rounds", "parent_top1_pct", "top1_pct",
            "acc_delta_pts", "decision"]
    ok = pair_rows[pair_rows["status"] == "ok"].drop_duplicates("variant_id", keep="last")
    by_id = summary.drop_duplicates("variant_id").set_index("variant_id")
    rows = []
    for _, p in ok.iterrows():
        if p["variant_id"] not in by_id.index or p["parent_id"] not in by_id.index:
            continue
        child, parent = by_id.loc[p["variant_id"]], by_id.loc[p["parent_id"]]
        axis = next((a for a, _ in reversed(pairs.OPTIMISATION_ORDER) if str(child.get(a)) != str(parent.get(a))), None)
        acc = None
        if pd.notna(child.get("top1_pct")) and pd.notna(parent.get("top1_pct")):
            acc = float(child["top1_pct"]) - float(parent["top1_pct"])
        v = pairs.verdict(json.loads(p["parent_p50s_ms"]), json.loads(p["child_p50s_ms"]), acc)
        rows.append({"variant_id": p["variant_id"], "brief_id": child.get("brief_id"), "model": child.get("model"),
                     "parent_id": p["parent_id"], "axis": axis,
                     "change": f"{axis}: {parent.get(axis)} -> {child.get(axis)}" if axis else DASH,
                     "parent_top1_pct": parent.get("top1_pct"), "top1_pct": child.get("top1_pct"),
                     "acc_delta_pts": acc, **{k: v.get(k) for k in cols if k in v}})
    return pd.DataFrame(rows, columns=cols)


def decision_note(paired: bool) -> str:
    if not paired:
        return ("Unpaired (this folder has no pairs.parquet): the gain is the parent's median p50 minus the "
                "variant's over repeats measured in separate tasks; the noise the larger max-min range.")
    return (f"Paired: parent and variant were timed in the same round-robin rounds of one benchmark process "
            f"(a slice of each, one after the other), each round's p50 compared; the gain is the median of the per-round differences, the noise their "
            f"interquartile range. A variant is kept when a two-sided sign test over the rounds gives "
            f"p < {pairs.SIGN_TEST_ALPHA} with a positive gain and it loses at most {pairs.MAX_ACC_DROP_PTS} "
            f"points of top-1; \"slower\" when the test says it is slower.")


def recheck_section(table: pd.DataFrame, any_gpu: bool) -> list[str]:
    lines = ["## In-sweep vs re-check", ""]
    if table.empty:
        return lines + ["No re-check in this sweep folder (`bench.recheck: -1`, or it stopped before its "
                        "re-check phase).", ""]
    n_out = int((~table["within"].astype(bool)).sum())
    lines += [f"At the end of the sweep, these rows were timed again in new actor processes, with the sweep's own "
              f"protocol and nothing compiling or training beside them: {_recheck_repeats(table)}. Tolerance: "
              f"{agreement.TOLERANCE['graph']:.0%} for graphed rows, {agreement.TOLERANCE['eager']:.0%} for eager "
              f"ones. {len(table) - n_out} of {len(table)} agree"
              + (f"; **{n_out} disagree, and are flagged in every table**." if n_out else ".")
              + ("" if any_gpu else " (CPU timings.)"), ""]
    calibration = calibration_line(table)
    if calibration:
        lines += [calibration, ""]
    ci = calibration is not None
    rows = []
    for _, r in table.iterrows():
        p50s = [with_ci(r, c, 4) if ci else f"{r[c]:.4f}" for c in ("sweep_p50_ms", "recheck_p50_ms")]
        inside = [DASH if _missing(r.get("inside")) else "yes" if bool(r["inside"]) else "**no**"] * ci
        rows.append([f"`{r['variant_id']}`", r["brief_id"] or DASH, r["kind"], *p50s, f"{r['ratio']:.3f}",
                     "yes" if r["within"] else "**no**", *inside])
    return lines + markdown_table(["Variant", "Brief", "Kind", "In-sweep p50 (ms)", "Re-check p50 (ms)", "Ratio",
                                   "Within"] + ["Inside 95% interval"] * ci, rows) + [""]


def calibration_line(table: pd.DataFrame) -> str | None:
    """The re-check as the calibration test of the in-sweep 95% intervals (runner/intervals.py): how many
    re-checked rows' re-check p50 fell inside the row's interval. None when no row has an interval."""
    inside = table["inside"].dropna()
    if inside.empty:
        return None
    k, n = int(inside.astype(bool).sum()), len(inside)
    by_kind = "; ".join(f"{kind} {int(g.astype(bool).sum())} of {len(g)}"
                        for kind, g in table.loc[inside.index].groupby("kind")["inside"])
    return (f"Calibration: re-check p50 inside the in-sweep 95% interval for {k} of {n} re-checked rows "
            f"({100.0 * k / n:.0f}%; {by_kind}). Intervals that hold keep about 90% or more inside (issue 23's "
            f"bar); fewer means the in-sweep intervals were too narrow, or the host changed between the sweep "
            f"and its re-check.")


def _recheck_repeats(table: pd.DataFrame) -> str:
    """How many repeats the re-checks had, and in how many slices each."""
    n, k = _values(table, "recheck_repeats"), _values(table, "recheck_slices")
    sliced = (f", each repeat in {_span(k)} slices spread over the task, so that a slow host phase of a "
              f"second or two lands in a slice or two of several repeats"
              if k and k[-1] > 1 else
              ", so that a few seconds of a slow host phase hit at most one repeat of a variant (a variant "
              "re-checked alone in its group has its repeats back to back)")
    return (f"{_span(n)} repeats each, spread round-robin over the re-checked variants of a group{sliced}; the "
            f"re-check p50 is the median over repeats of each repeat's p50, as the in-sweep one is")


def _values(table: pd.DataFrame, column: str) -> list[int]:
    return sorted({int(x) for x in table[column].dropna()})


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def checks_section(summary: pd.DataFrame) -> list[str]:
    """The numerical checks of every ok row, and what the flags mean."""
    ok = summary[summary["status"] == "ok"]
    lines = ["## Numerical checks and flags", "",
             "Every variant's batch-1 callable is checked against its evaluation callable on up to 500 test "
             "images (100 on a CPU; agreement of predicted classes), its logits against the fp32 eager model's "
             "(max error over the largest logit), and, when BN is folded, the folded fp32 model against the unfolded one; "
             "a row over its bound is an error row (bounds in runner/engine/rows.py). Flags: *re-check disagrees* "
             "(outside the table above's tolerance), *host >> event* (host p50 above "
             f"{agreement.HOST_GAP_FACTOR}x the event p50 + {agreement.HOST_GAP_SLACK_MS * 1000:.0f} us: the "
             "caller waits for more than the GPU works), *unstable* (repeats disagree), *eval failed*.", ""]
    if ok.empty:
        return lines + ["No ok row, so nothing was checked.", ""]
    agree = pd.to_numeric(ok["b1_agree_pct"], errors="coerce").dropna()
    fold = pd.to_numeric(ok["fold_max_rel_err"], errors="coerce").dropna()
    path = pd.to_numeric(ok["path_max_rel_err"], errors="coerce").dropna()
    if not agree.empty:
        lines.append(f"- batch-1 vs eval agreement: min {agree.min():.1f}%, median {agree.median():.1f}% "
                     f"over {len(agree)} variants")
    if not fold.empty:
        lines.append(f"- BN folding, max relative logit error: {fold.max():.2e} over {len(fold)} folded variants")
    if not path.empty:
        lines.append(f"- prepared path vs fp32 eager, max relative logit error: {path.max():.2e}")
    ev = ok[ok["eval_error"].fillna("").astype(str) != ""]
    lines += [f"- `{r['variant_id']}`: accuracy pass failed ({str(r['eval_error'])[:150]}); its latency stands"
              for _, r in ev.iterrows()]
    nvml = ok["nvml_note"].dropna().unique()
    if len(nvml) and (ok["device"] == "cuda").any():
        lines.append(f"- NVML: {'; '.join(map(str, nvml))[:200]} (GPU rows without NVML readings)")
    return lines + [""]
