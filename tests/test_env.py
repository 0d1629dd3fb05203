"""Where a row says its code came from: `env.git_commit` names this project's own checkout and nothing else."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASK = "from runner import env; print(env.git_commit())"


def _commit_of(project: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RUNNER_GIT_COMMIT", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-c", ASK], cwd=project, env={**env, "PYTHONPATH": str(project)},
                          capture_output=True, text=True, check=True, timeout=120).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_copy_inside_another_repository_does_not_take_its_commit(tmp_path):
    outer = tmp_path / "someone-elses-repo"
    outer.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(outer)]
    subprocess.run([*git, "init", "-q"], check=True)
    (outer / "x.txt").write_text("x")
    subprocess.run([*git, "add", "x.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "theirs"], check=True)
    copy = outer / "vendored" / "cifar-latency-runner"
    shutil.copytree(ROOT / "runner", copy / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    assert _commit_of(copy) == "unknown"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="runs from a git checkout of the project")
def test_the_projects_own_checkout_gives_its_commit():
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert _commit_of(ROOT).removesuffix("-dirty") == head
