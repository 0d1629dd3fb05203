"""Meaning checks of a sweep file, called by variants/loader.py while it loads.

The loader checks keys and types; this module checks what the values *mean*: a name that becomes a file
or folder is a plain name (it can never climb out of the run folder or make a sub-folder the merge does
not read), bench values are in range and fit the int32 / int64 columns they land in, a recipe can make at
least one training step. Every failure is the loader's SpecError with the file and the key path.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import yaml

# A name that becomes a path: starts with a letter or digit, then letters, digits, '.', '_', '-'.
# No '/', '\\', no leading '.', no '..' anywhere, so `run_dir / name` is always a direct child.
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME = 100          # a variant id adds ~40 characters and '.parquet' / temp-file affixes to a model key
INT32_MAX = 2**31 - 1   # warmup / iters / repeat are int32 columns in RESULT_SCHEMA
INT64_MAX = 2**63 - 1   # seed is an int64 column
# Budgets of a sweep file (issue 27); the shipped ones are < 4 KiB, < 10 levels deep and use no aliases.
MAX_YAML_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_EXPANDED = 2_000_000
MAX_VARIANTS = 20_000   # variants one file may expand to (a grid's product is checked before it is built)

Fail = Callable[[str, str], Exception]   # checker.Checker.fail(where, msg)

# (low, high, low inclusive?) of each bench field; high is always inclusive.
BENCH_RANGES: dict[str, tuple[float, float, bool]] = {
    "warmup": (0, INT32_MAX, True),
    "iters": (1, INT32_MAX, True),
    "repeats": (1, 1000, True),
    "eval_batch_size": (1, INT32_MAX, True),
    "cv_flag_pct": (0, float("inf"), False),
    "recheck": (-1, 10000, True),
    "slices": (1, 1000, True),
    "target_pct": (0, 100, True),
    "max_s": (0, 86400, False),
    "processes": (1, 2, True),
    "cpu_threads": (0, 4096, True),
}


def name_problem(value: Any) -> str | None:
    """Why `value` cannot be used as a file or folder name, or None when it is a plain name."""
    if not isinstance(value, str):
        return f"expected a plain name (a string), got {value!r} ({type(value).__name__})"
    if not PLAIN_NAME.match(value) or ".." in value:
        return (f"{value!r} is not a plain name: use letters, digits, '.', '_' and '-', starting with a "
                f"letter or digit, without '..' (it becomes a file or folder name)")
    if len(value) > MAX_NAME:
        return f"{value[:20]!r}... is {len(value)} characters long; at most {MAX_NAME}"
    return None


def plain_name(fail: Fail, value: Any, where: str) -> str:
    problem = name_problem(value)
    if problem:
        raise fail(where, problem)
    return value


def read_yaml(path: str, error: type[Exception]) -> Any:
    """The parsed file, or `error` with one line saying why it cannot be read (never a traceback)."""
    p = Path(path)
    try:
        if p.is_dir():
            raise error(f"{path}: is a directory, not a sweep file (the shipped ones are in variants/)")
        with open(p, "rb") as f:  # capped: `--config /dev/zero` or a huge file must not read forever
            data = f.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise error(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB; a sweep file is a few KiB of YAML")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such sweep file (the shipped ones are in variants/)") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (binary content); a sweep file is YAML") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    _within_budget(text, path, error)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError, TypeError) as e:  # `!!int x` is a ValueError out of PyYAML
        raise error(f"{path}: not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:  # the budget bounds depth; this is the belt behind it
        raise error(f"{path}: nested too deeply") from None


def _within_budget(text: str, path: str, error: type[Exception]) -> None:
    """Refuse, before anything is built, a document nested deeper than MAX_DEPTH (PyYAML composes
    recursively: RecursionError), larger than MAX_EXPANDED once its aliases are expanded ("billion laughs":
    a few lines that stand for 10**9 values, which a repr in an error message would then build), or with
    an alias inside the node it names (a value that contains itself). One pass over the parser's events,
    no recursion; the size of a node is its characters plus one per node, its aliases counted in full."""
    sizes: dict[str, int] = {}         # anchor -> expanded size of the node it names
    open_: list[list] = [[0, None]]    # [size so far, anchor] of each collection being read
    try:
        events = list(yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {' '.join(str(e).split())[:300]}") from None
    for ev in events:
        if isinstance(ev, yaml.CollectionStartEvent):
            if len(open_) > MAX_DEPTH:
                raise error(f"{path}: nested more than {MAX_DEPTH} levels deep (line {ev.start_mark.line + 1})")
            sizes.pop(ev.anchor, None)  # an alias inside this node cannot name it (nor an older namesake)
            open_.append([1, ev.anchor])
            continue
        if isinstance(ev, yaml.CollectionEndEvent):
            size, anchor = open_.pop()
        elif isinstance(ev, yaml.ScalarEvent):
            size, anchor = 1 + len(ev.value), ev.anchor
        elif isinstance(ev, yaml.AliasEvent):
            if ev.anchor not in sizes:
                raise error(f"{path}: alias *{ev.anchor[:40]} (line {ev.start_mark.line + 1}) names no complete "
                            "node before it (an undefined anchor, or the node that contains the alias)")
            size, anchor = sizes[ev.anchor], None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        open_[-1][0] += size
        if open_[-1][0] > MAX_EXPANDED:
            raise error(f"{path}: more than {MAX_EXPANDED:,} characters once its aliases are expanded "
                        f"(line {ev.start_mark.line + 1}); a sweep file is a few KiB")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML silently keeps the last,
    so a second `resnet18:` would replace the first model without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def seed(fail: Fail, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail("seed", f"expected an integer, got {value!r}")
    if not 0 <= value <= INT64_MAX:
        raise fail("seed", f"{value} is out of range; expected 0 .. 2**63-1")
    return value


def accuracy_bar(fail: Fail, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail("accuracy_bar_pct", f"expected a number, got {type(value).__name__}")
    if not 0 < value <= 100:  # NaN fails too
        raise fail("accuracy_bar_pct", f"{value!r} is out of range; expected a top-1 % in (0, 100]")
    return float(value)


def bench(fail: Fail, spec: Any) -> None:
    """Each bench field in range: a value that passes here cannot fail later as an error row."""
    for name, (lo, hi, lo_in) in BENCH_RANGES.items():
        v = getattr(spec, name)
        ok = (v >= lo if lo_in else v > lo) and v <= hi  # NaN fails both comparisons
        if not ok:
            left = "[" if lo_in else "("
            raise fail(f"bench.{name}", f"{v!r} is out of range; expected a value in {left}{lo:g}, {hi:g}]")
    if spec.slices > spec.iters:
        raise fail("bench.slices", f"{spec.slices} is more than bench.iters ({spec.iters}): every slice of a repeat "
                                   "needs at least one timed call")


def data(fail: Fail, spec: Any) -> None:
    if not spec.source.strip():
        raise fail("data.source", "is empty; expected cifar10, synthetic or a path")
    if spec.root is not None and not isinstance(spec.root, str):
        raise fail("data.root", f"expected a path (a string), got {spec.root!r}")


def recipe(fail: Fail, spec: Any, where: str) -> None:
    """Values that each pass their own range but cannot train together."""
    if spec.train_subset and spec.batch_size > spec.train_subset:
        raise fail(f"{where}.batch_size", f"{spec.batch_size} is larger than train_subset "
                   f"({spec.train_subset}): an epoch would have no full batch, so nothing would train")


def mapping_or_none(fail: Fail, value: Any, where: str) -> dict:
    """A section that must be a mapping (a recipe, arch_args) when present."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(where, f"expected a mapping, got {type(value).__name__}")
    return value


def list_or_none(fail: Fail, value: Any, where: str) -> list:
    """A section that must be a list (exclude) when present."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(where, f"expected a list, got {type(value).__name__}")
    return value


def variant_ids(fail: Fail, ids: list[str]) -> None:
    """Every variant id is a plain name, and no two differ only by case (one file on macOS / Windows)."""
    folded: dict[str, str] = {}
    for vid in ids:
        plain_name(fail, vid, f"variant {vid!r}")
        other = folded.setdefault(vid.lower(), vid)
        if other != vid:
            raise fail("models", f"variant ids {other!r} and {vid!r} differ only by case; they would share "
                       f"one result file on a case-insensitive file system")
