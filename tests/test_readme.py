"""README.md and docs/*.md render as intended (CommonMark + GFM tables, via markdown-it-py); their commands are real.

Running the documented sweeps here would take minutes, so instead every `python -m runner ...` command
the README or a docs page shows (in code blocks and inline code) is parsed by the real argument parser, the
files it names must exist, and commands that feed one another (train-bench -> train-summary, a sweep's
folder -> report / export) must fit together.
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
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
SECTIONS = ["Quick start (CPU, about 4 minutes)", "Tests", "The full sweep on GPUs", "How latency is measured",
            "On a cluster", "The Ray dashboard", "Where results go", "Data", "Declaring variants", "Command line",
            "Published results", "Layout"]
MAX_LINE = 120
CLOSING_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*$")
page_ids = [p.relative_to(ROOT).as_posix() for p in PAGES]


@lru_cache(maxsize=None)
def tokens(page: Path = README):
    return MarkdownIt("commonmark").enable("table").parse(page.read_text())


def lines(page: Path = README) -> list[str]:
    return page.read_text().splitlines()


def headings(level: str = "h2", page: Path = README) -> list[str]:
    t = tokens(page)
    return [t[i + 1].content for i, tok in enumerate(t) if tok.type == "heading_open" and tok.tag == level]


def inline_children(page: Path = README):
    for tok in tokens(page):
        if tok.type == "inline":
            yield from tok.children or []


@pytest.mark.parametrize("page", PAGES, ids=page_ids)
def test_every_code_fence_closes_on_its_own_line(page):
    fences = [t for t in tokens(page) if t.type == "fence"]
    if page == README:
        assert len(fences) >= 7
    src = lines(page)
    for f in fences:
        start, end = f.map
        assert end <= len(src) and CLOSING_FENCE.match(src[end - 1]), \
            f"code block opened on {page.name} line {start + 1} does not close (it runs to line {end})"
        # A line that starts like a fence but goes on with text does not close it: it is swallowed.
        assert not any(line.lstrip().startswith("```") for line in f.content.splitlines()), \
            f"code block at {page.name} line {start + 1} contains a fence line with text after it"


def test_expected_sections_are_headings():
    assert headings("h1") == ["cifar-latency-runner"]
    missing = [s for s in SECTIONS if s not in headings("h2") + headings("h3")]
    assert not missing, f"not rendered as headings: {missing}"


def test_the_first_screen_holds_the_two_commands():
    """A reference, not an essay (issue 26): what it is, the headline, then the quick start and the test
    command within the first 40 lines, and the whole page within 220."""
    src = lines()
    assert len(src) <= 220, f"README.md is {len(src)} lines; the rationale belongs in docs/"
    first = "\n".join(src[:40])
    assert "python -m runner sweep --config variants/quick.yaml" in first, "the quick start is not on screen one"
    assert ".venv/bin/python -m pytest -q" in first, "the test command is not on the first screen"
    assert "**Headline**" in first


def test_the_house_is_five_lines():
    """The Layout section describes the packages in five bullets, one line each."""
    src = lines()
    start = src.index("## Layout")
    end = next((i for i in range(start + 1, len(src)) if src[i].startswith("## ")), len(src))
    bullets = [line for line in src[start:end] if line.startswith("- ")]
    assert len(bullets) == 5, bullets
    for pkg in ("models/", "variants/", "runner/", "runner/engine/", "runner/diagnostics/"):
        assert any(f"`{pkg}`" in b for b in bullets), f"the house does not say what {pkg} is for"


def test_every_docs_page_has_a_title_and_is_linked_from_the_readme():
    assert DOCS, "docs/ holds the explanations the README links to"
    linked = {c.attrs["href"].split("#")[0] for c in inline_children() if c.type == "link_open"}
    for page in DOCS:
        assert len(headings("h1", page)) == 1, f"{page.name}: one title"
        assert f"docs/{page.name}" in linked, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids)
def test_lines_are_short(page):
    long = [(i + 1, len(line)) for i, line in enumerate(lines(page)) if len(line) > MAX_LINE]
    assert not long, f"{page.name}: lines over {MAX_LINE} characters (line, length): {long}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids)
def test_no_raw_html_and_tables_keep_their_columns(page):
    html = [t.content for t in tokens(page) if t.type == "html_block"] + \
           [c.content for c in inline_children(page) if c.type == "html_inline"]
    assert not html, f"{page.name}: text that renders as HTML (an unquoted <word>?): {html}"
    src = lines(page)
    for t in (t for t in tokens(page) if t.type == "table_open"):
        rows = src[t.map[0]:t.map[1]]
        # GFM splits a cell at every unescaped |, even inside `code`: extra cells are silently dropped.
        counts = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(counts) == 1, \
            f"{page.name}: table at line {t.map[0] + 1} has rows with different cell counts: {rows}"


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for level in ("h1", "h2", "h3") for h in headings(level, page)}


@pytest.mark.parametrize("page", PAGES, ids=page_ids)
def test_links_point_at_real_files_and_headings(page):
    for c in inline_children(page):
        if c.type != "link_open":
            continue
        href = c.attrs["href"]
        if re.match(r"[a-z]+://", href):
            continue
        path, _, anchor = href.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: link to missing file {href}"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page.name}: link to missing section {href}"


# ---- the commands -------------------------------------------------------------------------------------

def commands() -> list[list[str]]:
    """argv after `runner` of every `python -m runner ...` / `cifar-runner ...` in the pages' code blocks and spans."""
    texts = []
    for page in PAGES:
        texts += [t.content for t in tokens(page) if t.type == "fence" and t.info in ("", "bash", "sh", "shell")]
        texts += [c.content for c in inline_children(page) if c.type == "code_inline"]
    found = []
    for text in texts:
        text = re.sub(r"\\\n", " ", text)  # a command continued with a backslash is one command
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
            pytest.fail(f"documented command `python -m runner {' '.join(argv)}` does not parse")
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
        if args.verb == "train-summary":  # its inputs must be files a documented train-bench writes
            for pattern in args.parquet:
                assert any(fnmatch.fnmatch(o, pattern) for o in bench_outs), \
                    f"`{' '.join(argv)}`: no documented train-bench command writes {pattern}"
    sweeps = {load_sweep(p).name: load_sweep(p) for p in (ROOT / "variants").glob("*.yaml")}
    for argv, args in cmds:
        run = getattr(args, "run", None) or getattr(args, "run_dir", None)
        if args.verb in ("report", "export") and run.startswith("runs/"):
            name = Path(run).name
            assert name in sweeps, f"`{' '.join(argv)}`: no sweep file in variants/ makes {run}"
            if getattr(args, "variant", None):
                assert args.variant in {v.variant_id for v in sweeps[name].variants}, argv


# ---- published runs and investigations ------------------------------------------------------------------

REPORTS = ROOT / "reports"
FROZEN_PAGES = sorted(REPORTS.rglob("*.md")) + sorted((ROOT / "docs" / "investigations").rglob("*.md"))


@pytest.mark.parametrize("page", FROZEN_PAGES, ids=[p.relative_to(ROOT).as_posix() for p in FROZEN_PAGES])
def test_links_in_published_runs_and_investigations_resolve(page):
    """A folder moved (issue 26: investigations out of reports/) must leave no link behind, in any direction."""
    test_links_point_at_real_files_and_headings(page)


def test_reports_index_lists_every_published_run_newest_first():
    index = REPORTS / "README.md"
    table = any(t.type == "table_open" for t in tokens(index))
    listed = re.findall(r"^\| \[`([^`]+)`\]\(\1/README\.md\) \|.*\| (\d{4}-\d\d-\d\d) \|$",
                        index.read_text(), re.M)
    assert table and listed, "reports/README.md: a table, one row per folder, ending in its date"
    folders = sorted(p.name for p in REPORTS.iterdir() if p.is_dir())
    assert sorted(name for name, _ in listed) == folders, "every folder under reports/ once, nothing else"
    dates = [d for _, d in listed]
    assert dates == sorted(dates, reverse=True), "newest first"
    for name in folders:
        assert (REPORTS / name / "README.md").is_file(), f"reports/{name}/ has no README saying what it is"
