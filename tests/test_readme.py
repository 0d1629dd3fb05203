"""README.md renders as intended (CommonMark + GFM tables, via markdown-it-py) and its commands are real.

Running the documented sweeps here would take minutes, so instead every `python -m runner ...` command
the README shows (in code blocks and inline code) is parsed by the real argument parser, the files it
names must exist, and commands that feed one another (train-bench -> train-summary, a sweep's folder ->
report / export) must fit together.
"""
from __future__ import annotations

import fnmatch
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from runner.cli import build_parser
from variants import load_sweep

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTIONS = ["Quick start (CPU, a few minutes)", "Tests", "The full sweep on GPUs", "On a cluster",
            "The Ray dashboard", "Where results go", "Data", "Declaring variants", "Training",
            "How latency is measured", "Export: take the chosen model away", "Command line", "Published results",
            "Layout"]
CLOSING_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*$")


@lru_cache(maxsize=1)
def tokens():
    return MarkdownIt("commonmark").enable("table").parse(README.read_text())


def lines() -> list[str]:
    return README.read_text().splitlines()


def headings(level: str = "h2") -> list[str]:
    t = tokens()
    return [t[i + 1].content for i, tok in enumerate(t) if tok.type == "heading_open" and tok.tag == level]


def inline_children():
    for tok in tokens():
        if tok.type == "inline":
            yield from tok.children or []


def test_every_code_fence_closes_on_its_own_line():
    fences = [t for t in tokens() if t.type == "fence"]
    assert len(fences) >= 8
    src = lines()
    for f in fences:
        start, end = f.map
        assert end <= len(src) and CLOSING_FENCE.match(src[end - 1]), \
            f"code block opened on README line {start + 1} does not close (it runs to line {end})"
        # A line that starts like a fence but goes on with text does not close it: it is swallowed.
        assert not any(line.lstrip().startswith("```") for line in f.content.splitlines()), \
            f"code block at line {start + 1} contains a fence line with text after it"


def test_expected_sections_are_headings():
    assert headings("h1") == ["cifar-latency-runner"]
    missing = [s for s in SECTIONS if s not in headings("h2") + headings("h3")]
    assert not missing, f"not rendered as headings: {missing}"


def test_no_raw_html_and_tables_keep_their_columns():
    html = [t.content for t in tokens() if t.type == "html_block"] + \
           [c.content for c in inline_children() if c.type == "html_inline"]
    assert not html, f"text that renders as HTML (an unquoted <word>?): {html}"
    src = lines()
    for t in (t for t in tokens() if t.type == "table_open"):
        rows = src[t.map[0]:t.map[1]]
        # GFM splits a cell at every unescaped |, even inside `code`: extra cells are silently dropped.
        counts = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(counts) == 1, f"table at line {t.map[0] + 1} has rows with different cell counts: {rows}"


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_links_point_at_real_files_and_headings():
    anchors = {_slug(h) for h in headings("h2") + headings("h3")}
    for c in inline_children():
        if c.type != "link_open":
            continue
        href = c.attrs["href"]
        if href.startswith("#"):
            assert href[1:] in anchors, f"link to missing section {href}"
        elif not re.match(r"[a-z]+://", href):
            assert (ROOT / href).exists(), f"link to missing file {href}"


# ---- the commands -------------------------------------------------------------------------------------

def commands() -> list[list[str]]:
    """argv after `runner` of every `python -m runner ...` / `cifar-runner ...` in code blocks and spans."""
    texts = [t.content for t in tokens() if t.type == "fence" and t.info in ("", "bash", "sh", "shell")]
    texts += [c.content for c in inline_children() if c.type == "code_inline"]
    found = []
    for text in texts:
        for line in text.splitlines():
            for part in line.split("&&"):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:
                    continue
                found += _runner_argv(words)
    return found


def _runner_argv(words: list[str]) -> list[list[str]]:
    for i, w in enumerate(words):
        if Path(w).name in ("python", "python3") and words[i + 1:i + 2] == ["-m"] and len(words) > i + 2:
            module = words[i + 2]
            if module.split(".")[0] != "runner":   # python3 -m venv, pytest, ...
                return []
            assert module == "runner", f"`{' '.join(words)}`: the documented entry point is python -m runner VERB"
            return [words[i + 3:]]
        if Path(w).name == "cifar-runner":
            return [words[i + 1:]]
    return []


def parsed():
    parser = build_parser()
    out = []
    for argv in commands():
        if not argv or argv[0].isupper():  # prose naming the tool itself: `python -m runner VERB --help`
            continue
        try:
            out.append((argv, parser.parse_args(argv)))
        except SystemExit:
            pytest.fail(f"README command `python -m runner {' '.join(argv)}` does not parse")
    return out


def test_readme_commands_parse_with_the_real_cli():
    cmds = parsed()
    verbs = {args.verb for _, args in cmds}
    assert {"sweep", "list", "report", "train", "train-bench", "train-summary", "export",
            "crosscheck", "exclusivity"} <= verbs
    assert len(cmds) >= 15


def test_files_the_commands_name_exist():
    for argv, args in parsed():
        if getattr(args, "config", None):
            assert (ROOT / args.config).is_file(), f"`{' '.join(argv)}`: no {args.config}"
        for w in argv:
            if w.endswith((".yaml", ".yml")) and not w.startswith(("runs/", "~", "/", "..")):
                assert (ROOT / w).is_file(), f"`{' '.join(argv)}`: no {w}"


def test_commands_fit_together():
    cmds = parsed()
    bench_outs = [args.out for _, args in cmds if args.verb == "train-bench"]
    for argv, args in cmds:
        if args.verb == "train-summary":  # its inputs must be files a README train-bench writes
            for pattern in args.parquet:
                assert any(fnmatch.fnmatch(o, pattern) for o in bench_outs), \
                    f"`{' '.join(argv)}`: no train-bench command in README writes {pattern}"
    sweeps = {load_sweep(p).name: load_sweep(p) for p in (ROOT / "variants").glob("*.yaml")}
    for argv, args in cmds:
        run = getattr(args, "run", None) or getattr(args, "run_dir", None)
        if args.verb in ("report", "export") and run.startswith("runs/"):
            name = Path(run).name
            assert name in sweeps, f"`{' '.join(argv)}`: no sweep file in variants/ makes {run}"
            if getattr(args, "variant", None):
                assert args.variant in {v.variant_id for v in sweeps[name].variants}, argv
