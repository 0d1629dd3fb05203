"""The CLI (runner/cli.py) in-process: list, every early error path of sweep / report / train, --help defaults."""
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


# ---- one CLI: every verb, defaults in --help, shared options defined once --------------------------

VERBS = {"sweep", "list", "report", "train", "train-bench", "train-summary", "export", "scaling", "crosscheck", "exclusivity"}


def _subparsers():
    import argparse

    from runner.cli import build_parser
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_verb_is_a_subcommand_with_a_handler():
    import importlib

    subs = _subparsers()
    assert set(subs) == VERBS
    for verb, p in subs.items():
        module, func = p.get_default("target").split(":")
        assert callable(getattr(importlib.import_module(module), func)), verb


def test_top_level_help_lists_each_verb_once():
    import re

    from runner.cli import build_parser
    text = build_parser().format_help()
    for verb in VERBS:
        assert len(re.findall(rf"^\s+{re.escape(verb)}(\s|$)", text, flags=re.M)) == 1, (verb, text)


def test_help_shows_a_default_for_every_option():
    for verb, p in _subparsers().items():
        text = p.format_help()
        for a in p._actions:
            if not a.option_strings or a.dest == "help":
                continue
            flag = a.option_strings[-1]
            # The option's help block runs from its flag to the next line that starts a new option.
            block = text[text.index(f"  {flag}"):]
            nxt = [i for i in (block.find("\n  -", 1),) if i > 0]
            block = block[:nxt[0]] if nxt else block
            assert "(default:" in block, f"{verb} {flag}: no default in --help"


def test_shared_options_are_the_same_in_every_verb():
    seen: dict[str, set] = {}
    for p in _subparsers().values():
        for a in p._actions:
            if a.option_strings and a.option_strings[-1] in ("--config", "--data", "--address", "--device"):
                seen.setdefault(a.option_strings[-1], set()).add((a.help, a.default, a.type))
    assert set(seen) == {"--config", "--data", "--address", "--device"}
    assert all(len(v) == 1 for v in seen.values()), seen


TINY = """
sweep: tinytrain
data: {source: synthetic}
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.125}
    recipe: {epochs: 1, batch_size: 64, lr: 0.1, train_subset: 128, test_subset: 64}
grid:
  - precision: [fp32]
"""


def test_train_never_writes_over_a_sweeps_checkpoint(tmp_path, capsys):
    import torch

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    sweep_ckpt = tmp_path / "runs" / "tinytrain" / "checkpoints" / "tiny.pt"
    sweep_ckpt.parent.mkdir(parents=True)
    sweep_ckpt.write_bytes(b"the sweep's own checkpoint")
    rc = main(["train", "--config", str(cfg), "--model", "tiny", "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert rc == 0
    assert sweep_ckpt.read_bytes() == b"the sweep's own checkpoint"
    own = tmp_path / "runs" / "tinytrain" / "train" / "tiny.pt"
    ckpt = torch.load(own, weights_only=True)
    assert ckpt["key"] == "tiny" and ckpt["epochs"] == 1
    assert str(own) in capsys.readouterr().out


@pytest.mark.parametrize("argv,words", [
    (["crosscheck", "--iters", "0"], "argument --iters: 0: give a number >= 1"),
    (["crosscheck", "--warmup", "-1"], "argument --warmup: -1: give a number >= 0"),
    (["crosscheck", "--repeats", "two"], "argument --repeats: 'two' is not a whole number"),
    (["exclusivity", "--iters", "0"], "argument --iters: 0: give a number >= 1"),
    (["sweep", "--max-epochs", "0"], "argument --max-epochs: 0: give a number >= 1"),
    (["sweep", "--bench-iters", "1.5"], "argument --bench-iters: '1.5' is not a whole number"),
    (["train-bench", "--seeds", "a,b"], "argument --seeds: 'a,b': give comma-separated whole numbers"),
    (["train-bench", "--seeds", ","], "argument --seeds: ',': give comma-separated whole numbers"),
    # torch.manual_seed(2**64) was a traceback once the models had loaded; 2**63 made an uint64 seed column
    (["train-bench", "--seeds", "0,18446744073709551616"], "--seeds: 18446744073709551616: give a seed from -2**63"),
    (["train-bench", "--teacher-seed", "9223372036854775808"], "--teacher-seed: 9223372036854775808: give a seed"),
    # budgets in seconds / ms: nan, inf, 0 or less were taken (nan and inf never end a blocked_autorange)
    (["crosscheck", "--min-run-time", "nan"], "argument --min-run-time: nan: give a finite number of seconds above 0"),
    (["crosscheck", "--indep-rep-ms", "inf"], "argument --indep-rep-ms: inf: give a finite number of ms above 0"),
    (["crosscheck", "--indep-warmup-ms", "0"], "argument --indep-warmup-ms: 0: give a finite number of ms above 0"),
    (["exclusivity", "--seconds", "-5"], "argument --seconds: -5: give a finite number of seconds above 0"),
    (["exclusivity", "--device-index", "-1"], "argument --device-index: -1: give a number >= 0"),
    (["sweep", "--stop-after", "1e999"], "argument --stop-after: 1e999: give a finite number of seconds above 0"),
    (["sweep", "--stop-after", "soon"], "argument --stop-after: 'soon' is not a number of seconds"),
    # a port out of range was an OverflowError traceback once the sweep had loaded its data (issue 27)
    (["sweep", "--address", "127.0.0.1:99999"], "argument --address: '127.0.0.1:99999': expected host:port (port 1-65535)"),
    (["sweep", "--address", "head-node"], "argument --address: 'head-node': expected host:port"),
    (["sweep", "--address", "ray://head:"], "argument --address: 'ray://head:': expected host:port"),
])
def test_numeric_flags_are_refused_at_parse_time(argv, words, capsys):
    """Issue 27: a count of 0 or a word where a number belongs ends in argparse's one-line usage error (exit
    2), before any verb's code runs; `crosscheck --iters 0` used to run and report DISAGREE."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and words in err and "Traceback" not in err, err


def test_valid_seeds_still_reach_the_verb():
    from runner.cli import build_parser
    args = build_parser().parse_args(["train-bench", "--seeds", "0,1,-2", "--teacher-seed", str(2**63 - 1)])
    assert args.seeds == "0,1,-2" and args.teacher_seed == 2**63 - 1
    args = build_parser().parse_args(["crosscheck", "--min-run-time", "0.5", "--indep-rep-ms", "20"])
    assert (args.min_run_time, args.indep_rep_ms) == (0.5, 20.0)
