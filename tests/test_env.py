"""Where a row says its code came from: `env.git_commit` names this project's own checkout and nothing else."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _commit_of(project: Path, monkeypatch) -> str:
    """git_commit() as the copy of runner/env.py under `project` answers it (loaded from that file in this
    process: it finds its checkout from its own path), without the driver's RUNNER_GIT_COMMIT."""
    monkeypatch.delenv("RUNNER_GIT_COMMIT", raising=False)
    spec = importlib.util.spec_from_file_location("env_of_a_copy", project / "runner" / "env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.git_commit()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_copy_inside_another_repository_does_not_take_its_commit(tmp_path, monkeypatch):
    outer = tmp_path / "someone-elses-repo"
    outer.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(outer)]
    subprocess.run([*git, "init", "-q"], check=True)
    (outer / "x.txt").write_text("x")
    subprocess.run([*git, "add", "x.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "theirs"], check=True)
    copy = outer / "vendored" / "cifar-latency-runner"
    shutil.copytree(ROOT / "runner", copy / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    assert _commit_of(copy, monkeypatch) == "unknown"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="runs from a git checkout of the project")
def test_the_projects_own_checkout_gives_its_commit(monkeypatch):
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert _commit_of(ROOT, monkeypatch).removesuffix("-dirty") == head
