"""runner/__main__.py in-process: list, and every early error path of sweep / report / train (no Ray started)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from runner.__main__ import main
from variants import load_sweep

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "variants" / "quick.yaml")


def test_list_prints_every_variant(capsys):
    assert main(["list", "--config", QUICK]) == 0
    out = capsys.readouterr().out
    spec = load_sweep(QUICK)
    assert f"sweep 'quick' from {QUICK}" in out
    assert f"variants ({len(spec.variants)}):" in out
    for v in spec.variants:
        assert v.variant_id in out
    for m in spec.models:
        assert m.key in out and m.arch in out
    b1 = next(line for line in out.splitlines() if line.strip().startswith("B1 "))
    assert "mobilenet-fp32-nchw-eager" in b1
    assert "distilled from resnet18" in out


def test_list_with_misspelled_key(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("models:\n  resnet18: {arch: resnet18_cifar, recipe: {epoch: 3}}\ngrid: [{}]\n")
    assert main(["list", "--config", str(p)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert str(p) in cap.err and "models.resnet18.recipe.epoch" in cap.err and "allowed keys" in cap.err


def test_list_missing_config(tmp_path, capsys):
    assert main(["list", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert str(tmp_path / "nope.yaml") in capsys.readouterr().err


def test_sweep_with_missing_data_fails_before_ray(tmp_path, capsys):
    missing = "/nonexistent/path"
    t0 = time.perf_counter()
    rc = main(["sweep", "--config", QUICK, "--data", missing, "--out", str(tmp_path / "runs")])
    elapsed = time.perf_counter() - t0
    assert rc == 2
    err = capsys.readouterr().err
    assert missing in err and "--data cifar10" in err
    import ray
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists()  # nothing written
    assert elapsed < 30  # importing ray is the only heavy step; starting a cluster would be far slower


def test_report_on_empty_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "results" in err
    assert list(tmp_path.iterdir()) == []  # nothing written into the folder


def test_train_unknown_model_lists_models(capsys):
    assert main(["train", "--config", QUICK, "--model", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err
    for key in ("resnet18", "mobilenet", "mobilenet_kd"):
        assert key in err


def test_train_distilled_model_needs_a_sweep(capsys):
    assert main(["train", "--config", QUICK, "--model", "mobilenet_kd"]) == 2
    err = capsys.readouterr().err
    assert "mobilenet_kd" in err and "resnet18" in err and "sweep" in err


def test_bad_subcommand_exits():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
