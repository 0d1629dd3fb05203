"""`python -m runner export` end to end: the session's tiny sweep (real local Ray, synthetic data, 1 epoch),
export, then the exported files loaded in a process that cannot import this project give the same logits."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from runner.cli import main
from runner.data import load, normalizer
from runner.export import eval_model, pick

pytestmark = pytest.mark.slow

FOLD = "tiny-fp32-nchw-eager-fold"

# Runs with the repo off sys.path and an import hook that fails any import of the project's packages
# (an editable install would otherwise still find them): the files must load on torch / onnxruntime alone.
ISOLATED = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("models", "runner", "variants"):
                raise ImportError("project code imported: " + name)
    sys.meta_path.insert(0, Block())
    sys.path = [p for p in sys.path if p not in ("", ".", sys.argv[2])]
    import numpy as np, torch, onnxruntime as ort
    folder = sys.argv[1]
    x = np.load(folder + "/x.npy")
    a = torch.export.load(folder + "/model.pt2").module()(torch.from_numpy(x)).detach().numpy()
    s = ort.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
    b = s.run(None, {"input": x})[0]
    np.save(folder + "/pt2.npy", a); np.save(folder + "/onnx.npy", b)
    print("loaded without", sorted(m for m in ("models", "runner", "variants") if m in sys.modules))
""")


@pytest.fixture
def run_dir(tiny_sweep, copy_of):
    """A copy of the session's sweep (tests/conftest.py: tiny fp32, folded and not, ...): export writes into it."""
    return copy_of(tiny_sweep[2])


def test_export_remeasure_and_load_without_the_project(run_dir, tmp_path, capsys):
    """One export (each costs seconds of torch.export and ONNX) checked three ways: what `export` picks without
    --variant, the files and their re-measured accuracy, and the files loaded where the project cannot be."""
    default, why = pick(run_dir, None)  # no --variant: the report's rule (runner.decisions.choose)
    assert default["status"] == "ok" and why.startswith("most accurate ok variant")  # synthetic: none reaches 85%
    out = tmp_path / "fold"
    assert main(["export", "--run", str(run_dir), "--variant", FOLD, "--out", str(out)]) == 0
    assert f"exported {FOLD} (named with --variant)" in capsys.readouterr().out
    info = json.loads((out / "export.json").read_text())
    assert info["variant_id"] == FOLD and info["bn_folded"] and info["picked_because"] == "named with --variant"
    # exactly these: the ONNX file holds its weights (no model.onnx.data beside it to lose on the way)
    assert {p.name for p in out.iterdir()} == {"model.pt2", "model.onnx", "state_dict.pt", "export.json", "export.md"}
    acc = info["accuracy"]
    assert acc["images"] == 64 and info["input"]["shape"] == ["N", 3, 32, 32]
    for f in ("model.pt2", "model.onnx"):
        assert acc[f]["agreement_pct"] >= 99.0 and acc[f]["max_abs_logit_diff"] < 1e-3
        assert abs(acc[f]["top1_pct"] - acc["reference_top1_pct"]) <= 1.0
    # the project's model here is the checkpoint's, so its accuracy is the sweep's fp32 number
    assert acc["reference_top1_pct"] == pytest.approx(info["checkpoint_top1_pct"], abs=1e-6)
    sd = torch.load(out / "state_dict.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    assert "torch.export.load" in (run_dir / "export.md").read_text()
    # loaded in a process that cannot import this project, on an odd batch size
    data = load("synthetic")
    x = normalizer(torch.device("cpu"))(torch.from_numpy(data.test_x[:37])).numpy()
    np.save(out / "x.npy", x)
    repo = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", ISOLATED, str(out), repo], cwd=out, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded without []" in proc.stdout
    ckpt = torch.load(run_dir / "checkpoints" / "tiny.pt", weights_only=True)
    with torch.inference_mode():
        ref = eval_model(ckpt, fold=False)(torch.from_numpy(x)).numpy()  # the unfolded original
    for name in ("pt2.npy", "onnx.npy"):
        np.testing.assert_allclose(np.load(out / name), ref, rtol=1e-3, atol=1e-4)


def test_export_refuses_unknown_variant_and_missing_run(run_dir, tmp_path, capsys):
    assert main(["export", "--run", str(run_dir), "--variant", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no variant 'nope'" in err and FOLD in err
    assert main(["export", "--run", str(tmp_path)]) == 2
    assert "results.parquet" in capsys.readouterr().err
    # issue 27: a variant that did not end ok was exported with exit 0; now one line and exit 2
    ended = pd.read_parquet(run_dir / "results.parquet").groupby("variant_id")["status"].first()
    not_ok = ended[ended != "ok"]  # the broken model's error; the graph variant's skip on a CPU (it runs on a GPU)
    assert "broken-fp32-nchw-eager" in not_ok
    for vid, status in not_ok.items():
        assert main(["export", "--run", str(run_dir), "--variant", vid]) == 2
        err = capsys.readouterr().err
        assert f"variant '{vid}' ended as '{status}'" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (run_dir / "export").exists()
