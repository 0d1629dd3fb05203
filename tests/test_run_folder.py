"""A run folder that remembers its data and never contradicts itself (issue 25): the data source recorded
as it was used and reused by export / train / a resume, a no-op resume keeping the real timing section, and
`--fresh` setting the old outputs aside in one step. Real files, real Parquet; no Ray, no sweep."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from runner import commands, export, sweep
from runner.engine.steps import now
from variants import load_sweep

SWEEP = """
sweep: unit
data: {source: cifar10}
models:
  tiny: {arch: airbench_cifar, recipe: {epochs: 1, batch_size: 8}}
grid:
  - models: [tiny]
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An image folder of 10 classes x 2 images per split, named by a *relative* path from tmp_path."""
    monkeypatch.setenv("CIFAR_RUNNER_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i}.png")
    return "imgs"


def _spec(tmp_path, source="cifar10"):
    (tmp_path / "unit.yaml").write_text(SWEEP.replace("cifar10", source))
    return load_sweep(tmp_path / "unit.yaml")


def test_the_folder_records_the_data_it_used_and_export_and_train_reload_it(tmp_path, folder, monkeypatch):
    from runner.data import load

    spec, data = _spec(tmp_path), load(folder)  # `sweep --data imgs` beside a sweep file naming cifar10
    run_dir = tmp_path / "runs" / "unit"
    run_dir.mkdir(parents=True)
    sweep._write_meta(spec, data, run_dir, {}, now(), "", "code")
    absolute = str((tmp_path / "imgs").resolve())
    assert sweep._resolved(spec, data)["data"]["source"] == absolute  # resolved_config.json: what was used
    assert json.loads((run_dir / "sweep.json").read_text())["data"] == \
        {"source": absolute, "root": None, "sweep_file": "cifar10"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative name no longer resolves: only the record finds the folder
    # export without --data: the sweep's image folder, never a CIFAR-10 download
    x, y, source = export.sweep_test_set(run_dir, {"data_source": data.source}, {"recipe": {}}, None)
    assert x.shape == (20, 3, 32, 32) and len(y) == 20 and source == data.source
    # train (and a resume) without --data: the same folder while the sweep file still names cifar10 ...
    args = argparse.Namespace(data=None)
    assert commands._data(spec, args, run_dir).origin == absolute
    # ... and the sweep file's own source once it names another one
    assert commands._data(_spec(tmp_path, "synthetic"), args, run_dir).origin == "synthetic"
