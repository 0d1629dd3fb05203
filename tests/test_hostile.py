"""Hostile input and a hostile machine (issue 27): resource bombs in a sweep file, a file system that says no,
links planted in a run folder, files that lie. Each case ends in one line naming the problem and the right
exit status, never a traceback or a hang; real files, real Parquet, real torch (no Ray: these are the
driver's reads and writes). The fuzz test drives the sweep-file loader with generated YAML for a few seconds.
"""
from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
import yaml

from runner.__main__ import main
from variants import SpecError, load_sweep

ROOT = Path(__file__).resolve().parent.parent
MODELS = "models: {m: {arch: airbench_cifar}}\n"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


@pytest.fixture
def deadline():
    """`deadline(s)` arms SIGALRM: a loader that hangs raises Hang in the test instead of stopping the suite."""
    before = signal.signal(signal.SIGALRM, _alarm)
    yield lambda s: signal.setitimer(signal.ITIMER_REAL, s)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, before)


# ---- 1. a size and depth budget for every file the project reads ---------------------------------------

def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BOMBS = {
    # id: (text, words the one line holds). Before: > 40 s or MemoryError, RecursionError, a traceback.
    "laughs-in-name": (_laughs().replace("a8: &a8", "sweep: &a8") + MODELS, "aliases are expanded"),
    "laughs-in-label": (MODELS + "grid: [{}]\n" + _laughs() + "named: {B1: {model: m, label: *a8}}\n",
                        "aliases are expanded"),
    "laughs-in-data": (_laughs().replace("a8: &a8", "data: &a8") + MODELS, "aliases are expanded"),
    "deep-flow-list": ("sweep: " + "[" * 20000 + "]" * 20000 + "\n" + MODELS, "nest"),
    "deep-block-list": ("sweep:\n  " + "- " * 20000 + "x\n" + MODELS, "nest"),
    "self-alias": ("sweep: &x [1, *x]\n" + MODELS, "names no complete node"),
    "undefined-alias": ("sweep: *nowhere\n" + MODELS, "names no complete node"),
    "repeated-axis": (MODELS + "grid: [{precision: &p [fp32, fp32, fp32, fp32, fp32, fp32, fp32, fp32], "
                      "memory_format: &f [contiguous, contiguous, contiguous, contiguous, contiguous], "
                      "compile: [none, none, none, none, none, none, none, none, none, none, none]}]\n", None),
    "huge-arch-grid": ("models: {f: {arch: fastnet_cifar, arch_grid: {"   # 24,000 models, each built on the meta device
                       f"stem_width: {list(range(8, 28))}, kernel_size: [1, 3, 5, 7, 9, 11], "
                       f"logit_scale: {[i / 100 for i in range(1, 21)]}, "
                       f"widths: {[[w] * 3 for w in range(8, 18)]}}}}}}}\n",
                       "more than 20,000 models"),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_yaml_bombs_end_in_one_line(case, tmp_path, capsys, deadline):
    text, words = BOMBS[case]
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(text)
    deadline(10)
    t0 = time.perf_counter()
    rc, err = run_cli(["list", "--config", str(cfg)], capsys)
    assert time.perf_counter() - t0 < 5
    if words is None:  # repeats of one value are one value: it loads, with one variant
        assert rc == 0 and len(load_sweep(cfg).variants) == 1
        return
    assert rc == 2 and str(cfg) in err and words in err and one_line(err), err
    assert len(err) < 700


def test_an_endless_config_is_read_only_up_to_its_cap(capsys, deadline):
    deadline(10)
    rc, err = run_cli(["list", "--config", "/dev/zero"], capsys)
    assert rc == 2 and "/dev/zero" in err and "larger than" in err and one_line(err), err


def test_aliases_within_the_budget_still_load(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("models:\n  a: {arch: airbench_cifar, recipe: &r {epochs: 1, batch_size: 64}}\n"
                   "  b: {arch: airbench_cifar, recipe: *r}\ngrid: [{}]\n")
    spec = load_sweep(cfg)
    assert [m.recipe.epochs for m in spec.models] == [1, 1] and len(spec.variants) == 2


def test_error_messages_quote_a_bounded_value(tmp_path):
    cfg = tmp_path / "long.yaml"
    cfg.write_text(f"seed: [{', '.join(['123456789'] * 20000)}]\n" + MODELS)
    with pytest.raises(SpecError) as e:
        load_sweep(cfg)
    assert "seed" in str(e.value) and len(str(e.value)) <= SpecError.MAX_CHARS
    cfg.write_text('models: {"a\\nb\\rc": {arch: airbench_cifar}}\n')  # a key with line breaks
    with pytest.raises(SpecError) as e:
        load_sweep(cfg)
    assert len(str(e.value).splitlines()) == 1


# ---- 6. fuzz: generated YAML never gets anything but a one-line SpecError out of the loader --------------

KEYS = ["sweep", "seed", "data", "bench", "train", "models", "grid", "exclude", "named", "arch", "arch_args",
        "arch_grid", "recipe", "teacher", "model", "label", "source", "root", "epochs", "batch_size", "lr",
        "train_subset", "warmup", "iters", "repeats", "precision", "memory_format", "compile", "cuda_graph",
        "bn_fold", "tta", "per_gpu", "width_mult", "m", "B1", "airbench_cifar", "<<", "x" * 120, "a/b", "ü"]
SCALARS = ["fp32", "bf16", "fp16", "channels_last", "contiguous", "none", "default", "on", "off", "flip",
           "airbench_cifar", "resnet18_cifar", "synthetic", "m", "~", "null", ".nan", "-.inf", "0x1F", "1e400",
           "true", "2**70", "-1", "0", "1", "64", "0.05", "99999999999999999999999", '"a\\nb"', "'..'", "2001-12-14"]
TAGGED = ["!!binary aGVsbG8=", "!!python/object:os.system x", "!!set {a, b}", "!!str 5", "!!int x", "!!float 1"]


class _Gen:
    """Random YAML text in flow style (so nesting is free of indentation), with anchors and aliases placed
    anywhere, including inside the node they name, and seeded from a real sweep file's shape."""

    def __init__(self, rnd: random.Random):
        self.r, self.anchors, self.n = rnd, [], 0

    def scalar(self) -> str:
        r = self.r
        pick = r.random()
        if pick < 0.02:
            return r.choice(TAGGED)
        if pick < 0.6:
            return r.choice(SCALARS)
        if pick < 0.8:
            return str(r.choice([r.randint(-5, 5000), r.random() * 10 ** r.randint(-3, 30)]))
        chunk = "".join(chr(r.choice([r.randint(32, 126), r.randint(0, 0x2FFF)])) for _ in range(r.randint(0, 8)))
        return json.dumps(chunk * r.choice([1, 1, 10, 400]))  # control characters, unicode, long strings

    def node(self, depth: int) -> str:
        r = self.r
        if self.anchors and r.random() < 0.08:
            return "*" + r.choice(self.anchors)
        anchor = ""
        if r.random() < 0.1:
            self.n += 1
            anchor = f"&a{self.n} "
            if r.random() < 0.3:  # named before its node is complete: an alias inside it is a cycle
                self.anchors.append(f"a{self.n}")
        if depth <= 0 or r.random() < 0.35:
            text = self.scalar()
        elif r.random() < 0.5:
            text = "[" + ", ".join(self.node(depth - 1) for _ in range(r.randint(0, 6))) + "]"
        else:
            text = "{" + ", ".join(f"{k}: {self.node(depth - 1)}" for k in r.sample(KEYS, r.randint(0, 6))) + "}"
        if anchor and anchor[1:-1] not in self.anchors:
            self.anchors.append(anchor[1:-1])
        return anchor + text

    def mutate(self, value, p: float) -> str:
        """`value` (a real sweep file's structure) as flow YAML, each node replaced with probability `p`,
        each mapping losing or gaining a key now and then."""
        r = self.r
        if r.random() < p:
            return self.node(r.randint(0, 4))
        if isinstance(value, dict):
            items = [f"{json.dumps(k)}: {self.mutate(v, p)}" for k, v in value.items() if r.random() > p / 2]
            if r.random() < p:
                items.insert(r.randint(0, len(items)), f"{r.choice(KEYS)}: {self.node(r.randint(0, 4))}")
            return "{" + ", ".join(items) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(self.mutate(v, p) for v in value) + "]"
        return json.dumps(value)

    def document(self, base: dict) -> str:
        """A real sweep file, mutated; now and then a bomb (deep nesting, aliases that expand 9**n times)."""
        r, self.anchors = self.r, []
        text = self.mutate(base, r.choice([0.0, 0.02, 0.05, 0.1, 0.2]))
        if r.random() < 0.05:
            depth = r.choice([70, 900, 5000])
            text = text[:-1] + f", {r.choice(KEYS)}: " + "[" * depth + "]" * r.choice([0, depth]) + "}"
        if r.random() < 0.05 and text.startswith("{"):  # its last level under a key the loader reads
            laughs = _laughs(r.randint(2, 9)).strip().splitlines()
            laughs[-1] = f"{r.choice(KEYS)}:" + laughs[-1].split(":", 1)[1]
            text = "{" + ", ".join(laughs) + ", " + text[1:]
        return text + "\n"


def test_fuzz_sweep_loader(tmp_path, deadline):
    base = yaml.safe_load((ROOT / "variants" / "quick.yaml").read_text())
    gen, cfg = _Gen(random.Random(27)), tmp_path / "fuzz.yaml"
    loaded = refused = 0
    t0 = time.perf_counter()
    for i in range(3000):
        if time.perf_counter() - t0 > 6:  # bounded time in CI; the count depends on the machine's speed
            break
        text = gen.document(base)
        cfg.write_text(text, encoding="utf-8", errors="surrogatepass")
        deadline(5)  # a case that hangs fails the test, naming the text
        try:
            load_sweep(cfg)
            loaded += 1
        except SpecError as e:
            msg = str(e)
            assert str(cfg) in msg and len(msg.splitlines()) == 1 and len(msg) <= SpecError.MAX_CHARS, msg
            refused += 1
        except Hang:
            pytest.fail(f"case {i} hangs:\n{text[:2000]}")
        except Exception as e:  # noqa: BLE001 - what the test exists to find
            pytest.fail(f"case {i}: {type(e).__name__}: {str(e)[:300]}\n{text[:2000]}")
        finally:
            deadline(0)
    assert refused > 100 and loaded > 10, (loaded, refused)  # both paths exercised, not only the parser's
