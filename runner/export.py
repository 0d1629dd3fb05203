"""Export a model of a finished sweep as files that load without this project, and re-measure them.

    python -m runner export --run runs/<sweep> [--variant ID] [--out DIR] [--data SOURCE]

The model is the report's chosen one (runner/decisions.choose) or `--variant`. What is exported is the fp32
eval model of that variant's checkpoint, with its BatchNorms folded when the variant folds them: precision,
memory format, compile mode and CUDA graph are deployment choices of the runtime that loads the file. What
the folder holds, and how its accuracy is re-measured from the files themselves: docs/export.md.
"""
from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from runner import files
from runner.data import CLASSES, MEAN, STD, DataError, load, normalizer, recorded
from runner.results import summarize
from runner.schema import read
from variants.spec import ACCURACY_BAR_PCT, stable_hash

EVAL_BATCH = 500


def pick(run_dir: Path, variant_id: str | None) -> tuple[pd.Series, str]:
    """(the variant's summary line, why it was picked) from the sweep's results.parquet."""
    from runner.decisions import choose  # the report's rule, so export and report name the same model

    summary = summarize(read(run_dir / "results.parquet"))
    if variant_id:
        hit = summary[summary["variant_id"] == variant_id]
        if hit.empty:
            raise LookupError(f"no variant '{variant_id}' in {run_dir / 'results.parquet'}; variants there: "
                              + ", ".join(summary["variant_id"]))
        row = hit.iloc[0]
        if row["status"] != "ok":  # an errored or skipped variant has no measured model to stand for
            why = str(row.get("error") or "").partition("\n")[0][:200]
            raise LookupError(f"variant '{variant_id}' ended as '{row['status']}' in the sweep"
                              + (f" ({why})" if why else "") + ": nothing measured to export")
        return row, "named with --variant"
    meta = files.read_json(run_dir / "sweep.json") if (run_dir / "sweep.json").exists() else {}
    bar = float(meta.get("accuracy_bar_pct", ACCURACY_BAR_PCT))
    best = choose(summary, bar)
    if best["chosen"] is not None:
        return best["chosen"], f"lowest host-clock p95 among ok variants with top-1 >= {bar:g}%"
    if best["most_accurate"] is not None:
        return best["most_accurate"], f"most accurate ok variant, the fastest of those tied (none reached {bar:g}%)"
    raise LookupError(f"no ok variant with an accuracy in {run_dir / 'results.parquet'}")


def row_config(run_dir: Path, variant_id: str) -> dict[str, Any]:
    """The variant's resolved config (variant axes, model spec, bench) as the bench task recorded it."""
    rows = read(run_dir / "results.parquet", columns=["variant_id", "config_json"])
    cfg = rows[(rows["variant_id"] == variant_id) & rows["config_json"].notna()]["config_json"]
    if cfg.empty:
        raise LookupError(f"{variant_id}: no row records its config (its model never trained?)")
    return json.loads(cfg.iloc[0])


def eval_model(ckpt: dict, fold: bool, tta: str = "none") -> torch.nn.Module:
    """The fp32 eval model on CPU, folded when the variant folds, with its test-time augmentation (the
    two optimisations that change the function or the weights)."""
    from runner.optimize import fold_batchnorm, with_tta
    from runner.train import model_from_checkpoint

    model = model_from_checkpoint(ckpt, torch.device("cpu")).float()
    return with_tta(fold_batchnorm(model)[0] if fold else model, tta)


def write_program(model: torch.nn.Module, out: Path) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension (example batch 2: export specialises sizes 0 and 1)."""
    example = torch.randn(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    files.write_via_memory(out / "model.pt2", lambda f: torch.export.save(program, f))
    return program


def write_onnx(program: torch.export.ExportedProgram, model: torch.nn.Module, path: Path) -> str:
    """ONNX of the same program through the dynamo exporter; the TorchScript exporter when that fails
    (it needs onnxscript, and torch versions differ in what it supports). Returns which one wrote it."""
    names = dict(input_names=["input"], output_names=["logits"])
    try:
        # external_data=False: one file, the weights inside it (its default writes them beside, as .data)
        torch.onnx.export(program, (torch.randn(2, 3, 32, 32),), str(path), dynamo=True, verbose=False,
                          external_data=False, **names)
        return "torch.onnx.export(dynamo=True)"
    except Exception as e:  # noqa: BLE001 - any failure: try the other exporter, and say which one wrote
        first = f"{type(e).__name__}: {e}"[:300]
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
    return f"torch.onnx.export(dynamo=False) (dynamo exporter failed: {first})"


def logits_of(fn, x: torch.Tensor) -> np.ndarray:
    """All logits of `fn` over `x` (normalized fp32), in batches."""
    with torch.inference_mode():
        return np.concatenate([np.asarray(fn(x[i:i + EVAL_BATCH])) for i in range(0, len(x), EVAL_BATCH)])


def remeasure(out: Path, reference: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> dict[str, Any]:
    """Top-1 of the reference model and of each exported file, loaded back from disk, on (x, y)."""
    import onnxruntime as ort

    ref = logits_of(lambda b: reference(b).numpy(), x)
    pt2 = torch.export.load(out / "model.pt2").module()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    outs = {"model.pt2": logits_of(lambda b: pt2(b).numpy(), x),
            "model.onnx": logits_of(lambda b: session.run(None, {"input": b.numpy()})[0], x)}

    res: dict[str, Any] = {"images": int(len(y)), "reference_top1_pct": float((ref.argmax(1) == y).mean() * 100)}
    for name, logits in outs.items():
        res[name] = {"top1_pct": float((logits.argmax(1) == y).mean() * 100),
                     "agreement_pct": float((logits.argmax(1) == ref.argmax(1)).mean() * 100),
                     "max_abs_logit_diff": float(np.abs(logits - ref).max())}
    return res


def sweep_test_set(run_dir: Path, ckpt: dict, model_cfg: dict, data_arg: str | None) -> tuple[torch.Tensor, np.ndarray, str]:
    """The test images the sweep evaluated this model on (normalized), refusing data that is not the same."""
    rec = recorded(run_dir) or {}  # the data the sweep used (sweep.json): no --data, no download needed
    source = data_arg or rec.get("source", "cifar10")
    data = load(source, rec.get("root"))
    if not str(ckpt.get("data_source", "")).startswith(data.source):
        raise DataError(f"the checkpoint was trained on '{ckpt.get('data_source')}', but --data {source} is "
                        f"'{data.source}': pass the --data the sweep ran with")
    test = data.subset(0, model_cfg["recipe"].get("test_subset", 0))
    x = normalizer(torch.device("cpu"))(torch.from_numpy(np.array(test.test_x)))
    return x, np.asarray(test.test_y), test.source


def export(run_dir: Path, variant_id: str | None = None, out: Path | None = None,
           data_arg: str | None = None) -> dict[str, Any]:
    """Write the export folder for one variant of `run_dir`; return what export.json holds."""
    row, why = pick(run_dir, variant_id)
    cfg = row_config(run_dir, row["variant_id"])
    ckpt_path = run_dir / "checkpoints" / f"{row['model']}.pt"
    if not ckpt_path.exists():
        raise LookupError(f"no checkpoint {ckpt_path}: the sweep did not keep model '{row['model']}'")
    ckpt = _checkpoint(ckpt_path, row, cfg["model"])
    out = out or run_dir / "export" / row["variant_id"]
    out.mkdir(parents=True, exist_ok=True)
    x, y, test_source = sweep_test_set(run_dir, ckpt, cfg["model"], data_arg)  # fail before writing anything big

    model = eval_model(ckpt, fold=bool(cfg["variant"]["bn_fold"]), tta=cfg["variant"].get("tta", "none"))
    program = write_program(model, out)
    onnx_method = files.write_by_name(out / "model.onnx", lambda name: write_onnx(program, model, name))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    files.write_via_memory(out / "state_dict.pt", lambda f: torch.save(state, f))
    info = describe(row, why, cfg, ckpt, ckpt_path, onnx_method)
    info["accuracy"] = {"test_set": test_source, **remeasure(out, model, x, y)}
    info["files"] = {f: {"bytes": (out / f).stat().st_size,
                         "sha256": hashlib.sha256((out / f).read_bytes()).hexdigest()}
                     for f in ("model.pt2", "model.onnx", "state_dict.pt")}
    files.write_json(info, out / "export.json")
    text = loading_snippet(info, out)
    files.write_text(out / "export.md", text)
    log = run_dir / "export.md"  # one section per export, beside report.md; rewritten, never appended through a link
    earlier = files.read_bytes(log).decode(errors="replace") if log.is_file() and not log.is_symlink() else ""
    files.write_text(log, earlier + text + "\n")
    return info


def _checkpoint(path: Path, row: pd.Series, model_cfg: dict) -> dict:
    """The checkpoint the variant was measured from, or LookupError: a file that does not load, or that holds
    another model (its spec hash differs from the one the variant's rows record), is not exported."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors alike: the file is not a checkpoint
        raise LookupError(f"{path}: not a checkpoint this runner wrote ({files.short(e, 120)})") from None
    want = stable_hash(model_cfg)
    if not isinstance(ckpt, dict) or ckpt.get("spec_hash") != want or ckpt.get("key") != row["model"]:
        got = ckpt if not isinstance(ckpt, dict) else f"model '{ckpt.get('key')}' (spec {ckpt.get('spec_hash')})"
        raise LookupError(f"{path} holds {files.short(got, 80)}, but variant '{row['variant_id']}' was measured "
                          f"on model '{row['model']}' (spec {want}): re-run the sweep to train it again")
    return ckpt


def describe(row: pd.Series, why: str, cfg: dict, ckpt: dict, ckpt_path: Path, onnx_method: str) -> dict[str, Any]:
    """export.json's description of the model and how to feed it (everything but the measurements)."""
    import onnxruntime

    return {
        "variant_id": row["variant_id"], "brief_id": _text(row.get("brief_id")), "label": _text(row.get("label")),
        "picked_because": why, "variant": cfg["variant"], "model": ckpt["key"], "arch": ckpt["arch"],
        "arch_args": ckpt["arch_args"], "bn_folded": bool(cfg["variant"]["bn_fold"]),
        "exported_as": "fp32 eval model, batch dimension dynamic",
        "checkpoint": str(ckpt_path), "checkpoint_top1_pct": ckpt["top1_pct"],
        "sweep_row": {"top1_pct": row.get("top1_pct"), "lat_p50_ms": row.get("lat_p50_ms"),
                      "lat_p95_ms": row.get("lat_p95_ms"), "gpu_name": row.get("gpu_name")},
        "input": {"name": "input", "shape": ["N", 3, 32, 32], "dtype": "float32", "channels": "RGB",
                  "normalize": "x = (pixels / 255 - mean) / std", "mean": list(MEAN), "std": list(STD)},
        "output": {"name": "logits", "shape": ["N", 10], "classes": list(CLASSES)},
        "onnx_exporter": onnx_method, "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _text(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else str(v)


def loading_snippet(info: dict[str, Any], out: Path) -> str:
    acc = info["accuracy"]
    lines = [f"## Export: `{info['variant_id']}`", "",
             f"{info['picked_because']}; {info['exported_as']}"
             + (", BatchNorm folded" if info["bn_folded"] else "") + f". Folder: `{out}`.", "",
             f"Top-1 on {acc['images']} test images ({acc['test_set']}), re-measured from the files:", "",
             "| File | Top-1 (%) | Agreement with the project's model (%) | Max logit diff |", "|---|---|---|---|"]
    lines += [f"| `{f}` | {acc[f]['top1_pct']:.2f} | {acc[f]['agreement_pct']:.2f} | {acc[f]['max_abs_logit_diff']:.2e} |"
              for f in ("model.pt2", "model.onnx")]
    lines += [f"| (project's model) | {acc['reference_top1_pct']:.2f} | 100.00 | 0 |", "",
              "Loading, without this project (input: float32 RGB, N x 3 x 32 x 32, normalized as below):", "",
              "```python", "import numpy as np", "import torch", "",
              f"mean, std = np.array({list(MEAN)}), np.array({list(STD)})",
              "# images: uint8 array (N, 32, 32, 3), RGB",
              "x = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)", "",
              "program = torch.export.load(\"model.pt2\")", "logits = program.module()(torch.from_numpy(x))", "",
              "import onnxruntime as ort", "",
              "session = ort.InferenceSession(\"model.onnx\", providers=[\"CPUExecutionProvider\"])",
              "logits = session.run(None, {\"input\": x})[0]", "```", ""]
    return "\n".join(lines)


def run(args) -> int:
    """`python -m runner export` (options: runner/cli.py)."""
    run_dir = Path(args.run)
    if not (run_dir / "results.parquet").exists():
        print(f"error: {run_dir} has no results.parquet (is it a finished sweep folder?)", file=sys.stderr)
        return 2
    try:
        info = export(run_dir, args.variant, Path(args.out) if args.out else None, args.data)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    acc = info["accuracy"]
    print(f"exported {info['variant_id']} ({info['picked_because']}) to "
          f"{Path(args.out) if args.out else run_dir / 'export' / info['variant_id']}")
    for f in ("model.pt2", "model.onnx"):
        print(f"  {f:<11} top1 {acc[f]['top1_pct']:.2f}%  agreement {acc[f]['agreement_pct']:.2f}%  "
              f"max logit diff {acc[f]['max_abs_logit_diff']:.2e}")
    print(f"  project's model top1 {acc['reference_top1_pct']:.2f}% on {acc['images']} test images")
    return 0
