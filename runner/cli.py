"""`python -m runner <verb>` (also installed as `cifar-runner <verb>`): every command a user runs, listed
below once (each verb's line is the help it was declared with).

`python -m runner <verb> --help` lists a verb's options with their defaults. Options that several verbs
take (--config, --data, --out, --address, --device, ...) mean the same in every verb.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import textwrap
from typing import Any

from runner.engine.control import STOPPED_EXIT


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default; descriptions keep their line breaks."""


def _number(convert, ok, what: str, want: str):
    """An argparse type: `convert(text)` that passes `ok`, refused at parse time with the flag's value named."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text}: give {want}")
        return value
    return parse


def _at_least(low: int):
    return _number(int, lambda v: v >= low, "a whole number", f"a number >= {low}")


def _positive(unit: str):
    """A finite number of `unit` above 0 (nan, inf and 1e999 are refused, not waited for)."""
    return _number(float, lambda v: 0 < v < math.inf, f"a number of {unit}", f"a finite number of {unit} above 0")


def _address(text: str) -> str:
    """--address: 'auto', 'local', host:port or ray://host:port, the port a number in range (whether a cluster
    answers there is asked when the sweep starts: runner.guard.probe_address)."""
    from runner.guard import host_port

    if text not in ("auto", "local"):
        try:
            host_port(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"'{text}': {e}") from None
    return text


# A seed fits the int64 seed column (torch takes these; 2**64 was a traceback once the models had loaded,
# and 2**63 made train-bench's seed column uint64).
_seed = _number(int, lambda v: -2**63 <= v <= 2**63 - 1, "a whole number", "a seed from -2**63 to 2**63-1")


def _seeds(text: str) -> str:
    """Comma-separated whole numbers (kept as text: runner.train_bench.parse_seeds reads it)."""
    bad = [s for s in text.split(",") if s.strip() and not s.strip().lstrip("-").isdigit()]
    if bad or not text.strip(","):
        raise argparse.ArgumentTypeError(f"'{text}': give comma-separated whole numbers, e.g. 0,1,2")
    for s in filter(str.strip, text.split(",")):
        _seed(s)
    return text


# The options several verbs take, defined once. A verb's code is imported only when that verb runs, so
# `list` and `--help` stay fast. flag -> add_argument keywords. A verb may override the default and help (e.g. what --out names).
SHARED: dict[str, dict[str, Any]] = {
    "--config": dict(default="variants/default.yaml", metavar="YAML",
                     help="sweep file: the models, their training recipes and the grid of variants"),
    "--data": dict(metavar="SOURCE", help="cifar10 (downloaded once), synthetic (tests only) or PATH of an "
                                          "image-folder copy; None means the sweep file's data.source"),
    "--address": dict(type=_address, metavar="ADDR", help="join a running Ray cluster ('auto' on a cluster node, or "
                                           "host:port); None starts a local Ray on this machine"),
    "--out": dict(default="runs", metavar="DIR", help="parent folder: results go to DIR/<sweep>/"),
    "--max-epochs": dict(type=_at_least(1), metavar="N", help="cap every model's epochs (the report then says "
                                                              "the run is shortened); None keeps the recipes'"),
    "--bench-iters": dict(type=_at_least(1), metavar="N", help="cap warm-up and timed iterations per repeat "
                                                               "(marks the run shortened); None keeps the file's"),
    "--device": dict(metavar="DEV", help="torch device such as cuda:0 or cpu; None means cuda when "
                                         "available, else cpu"),
}


def shared(p: argparse.ArgumentParser, *flags: str, **override: Any) -> None:
    """Add shared options by flag; keyword overrides apply to the single flag given with them."""
    for flag in flags:
        p.add_argument(flag, **{**SHARED[flag], **override})


def _verb(sub, name: str, target: str, help_: str, description: str = "") -> argparse.ArgumentParser:
    """A sub-command whose handler is `target` ("module:function"), imported only when it runs."""
    p = sub.add_parser(name, help=help_, description=textwrap.fill(description or help_, 100),
                       formatter_class=HelpFormatter)
    p.set_defaults(target=target)
    return p


def _sweep_verbs(sub) -> None:
    p = _verb(sub, "sweep", "runner.commands:cmd_sweep", "train every model, measure every variant, write the report",
              "Train every model of the sweep file and measure every variant on every GPU at once (Ray); "
              "re-running the same command resumes.")
    shared(p, "--config", "--data", "--address", "--out", "--max-epochs", "--bench-iters")
    p.add_argument("--fresh", action="store_true",
                   help="measure everything again; earlier outputs move to OUT/<sweep>/previous/<time>/")
    p.add_argument("--stop-after", type=_positive("seconds"), metavar="SECONDS",
                   help="submit no task after SECONDS; the tasks in flight land, then the sweep stops with "
                        f"exit {STOPPED_EXIT} and the same command resumes it (for GPU leases with a time "
                        "limit: nothing finished is lost); None runs to the end")

    p = _verb(sub, "list", "runner.commands:cmd_list", "print the models and variants a sweep file expands to")
    shared(p, "--config")

    p = _verb(sub, "report", "runner.commands:cmd_report", "rebuild report.md and its plots from a sweep folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a sweep folder, e.g. runs/quick")

    p = _verb(sub, "train", "runner.commands:cmd_train", "train one model of a sweep file, outside a sweep",
              "Train one model and save it to OUT/<sweep>/train/<model>.pt (never over the sweep's own "
              "checkpoints/). A distilled model needs its teacher: run it inside a sweep.")
    shared(p, "--config")
    p.add_argument("--model", required=True, help="model key of the sweep file (see `list`)")
    shared(p, "--data", "--out", "--max-epochs", "--device")


def _training_verbs(sub) -> None:
    p = _verb(sub, "train-bench", "runner.train_bench:run", "train models on one device and tabulate them (no Ray)",
              "Train models of a sweep file on one device, one after another, and print model, epochs, "
              "training seconds, images/s and top-1 (with the spread over seeds). Writes Parquet after "
              "every training.")
    shared(p, "--config")
    p.add_argument("--models", metavar="KEYS", help="comma-separated model keys of the sweep file; None: all")
    p.add_argument("--seeds", type=_seeds, help="comma-separated seeds; repeat one (0,0) to check run-to-run "
                                   "reproducibility; None: the sweep file's seed")
    p.add_argument("--teacher-seed", type=_seed, metavar="N",
                   help="train each teacher once with this seed; None: once per student seed")
    shared(p, "--data", "--max-epochs", "--device")
    shared(p, "--out", default="runs/train_bench.parquet", metavar="FILE", help="Parquet file to write")

    p = _verb(sub, "train-summary", "runner.train_summary:run", "merge train-bench outputs into one table",
              "Merge train-bench Parquet files into one training table and print it as markdown "
              "(one line per folder, file and model).")
    p.add_argument("parquet", nargs="+", metavar="FILE", help="train-bench outputs (shell globs welcome)")
    p.add_argument("--merged-out", metavar="FILE", help="also write all rows to this Parquet file")
    p.add_argument("--markdown-out", metavar="FILE", help="also write the table to this file")


def _export_verb(sub) -> None:
    p = _verb(sub, "export", "runner.export:run", "export a model of a finished sweep (torch.export + ONNX)",
              "Write the sweep's chosen model (lowest host-clock p95 at or above the accuracy bar, else the most "
              "accurate, the fastest of equals), or --variant, as model.pt2 + model.onnx + state_dict.pt + "
              "export.json, and check the exported files' accuracy on the test set (CPU).")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished sweep folder, e.g. runs/quick")
    p.add_argument("--variant", metavar="ID", help="variant id to export; None: the chosen model")
    shared(p, "--out", default=None, help="folder to write; None: RUN_DIR/export/<variant_id>")
    shared(p, "--data")


def _scaling_verb(sub) -> None:
    p = _verb(sub, "scaling", "runner.scaling:run", "compare runs of one sweep on different numbers of GPUs",
              "Compare sweep folders of the same sweep file run on different numbers of GPUs: each one's wall "
              "time (summed over its invocations), speed-up and efficiency against the run with the fewest "
              "GPUs, where the time went, and their timelines on one axis. Writes OUT/scaling.md and "
              "OUT/scaling_timeline.png.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="sweep folders, e.g. runs-1gpu/default runs-2gpu/default")
    shared(p, "--out", default="runs/scaling", metavar="DIR", help="folder to write")


def _diagnostic_verbs(sub) -> None:
    p = _verb(sub, "crosscheck", "runner.diagnostics.crosscheck:run",
              "check our batch-1 timer against an independent one",
              "Time three untrained variants with our bench, then with an independent timer (triton's "
              "do_bench on a GPU, else torch.utils.benchmark), then ours again; agreement is within 10%.")
    p.add_argument("--iters", type=_at_least(1), default=1000, help="timed iterations per repeat of our bench")
    p.add_argument("--warmup", type=_at_least(0), default=200, help="warm-up iterations per repeat of our bench")
    p.add_argument("--repeats", type=_at_least(1), default=3, help="repeats of our bench")
    p.add_argument("--timer", choices=("auto", "triton", "torch"), default="auto",
                   help="independent timer: auto = triton on CUDA when installed, else torch's Timer")
    p.add_argument("--indep-warmup-ms", type=_positive("ms"), default=100.0, help="do_bench warm-up budget (ms)")
    p.add_argument("--indep-rep-ms", type=_positive("ms"), default=1000.0, help="do_bench measuring budget (ms)")
    p.add_argument("--min-run-time", type=_positive("seconds"), default=1.0,
                   help="torch Timer blocked_autorange budget (s)")
    p.add_argument("--only", metavar="ARCHS", help="comma-separated architectures to keep of the three; None: all")
    shared(p, "--device")
    shared(p, "--out", default="runs/crosscheck.json", metavar="FILE", help="JSON report to write")

    p = _verb(sub, "exclusivity", "runner.diagnostics.exclusivity:run",
              "show that a second process on the benchmark GPU is noticed (needs a GPU)",
              "Bench alone, with a second process loading the same GPU, and after: NVML must list the "
              "other process (gpu_exclusive False) and host latency must rise.")
    p.add_argument("--seconds", type=_positive("seconds"), default=20.0,
                   help="how long the second process keeps the GPU busy")
    p.add_argument("--warmup", type=_at_least(0), default=50, help="warm-up iterations of each bench")
    p.add_argument("--iters", type=_at_least(1), default=300, help="timed iterations of each bench")
    p.add_argument("--device-index", type=_at_least(0), default=0, help="CUDA device index (both processes use it)")
    shared(p, "--out", default="runs/exclusivity.json", metavar="FILE", help="JSON report to write")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runner", description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    _sweep_verbs(sub)
    _training_verbs(sub)
    _export_verb(sub)
    _scaling_verb(sub)
    _diagnostic_verbs(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runner import guard
    try:
        module, func = args.target.split(":")
        with guard.handle_signals():  # Ctrl-C / SIGTERM: clean shutdown, exit 130 / 143
            return getattr(importlib.import_module(module), func)(args)
    except KeyboardInterrupt:
        code = guard.interrupted_exit_code()
        print(f"interrupted (exit {code}); a sweep keeps what landed: re-run the same command to resume",
              file=sys.stderr)
        return code
    except Exception as e:
        line = _user_error(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2


def _user_error(e: Exception) -> str | None:
    """One line for an error a user can fix (exit 2); None for anything else (its traceback is shown)."""
    from runner.files import FileError, oserror_line, short
    from runner.guard import GuardError
    from variants import SpecError
    if isinstance(e, SpecError):
        return f"error in sweep file: {e}"
    if isinstance(e, OSError):  # the machine said no: permission, read-only or full disk, a file where a folder goes
        return f"error: {oserror_line(e)}"
    if isinstance(e, UnicodeError):  # a name or file that is not text in the encoding it is read with
        return f"error: {short(e)}"
    if isinstance(e, (GuardError, FileError)):  # FileError: a run-folder file too large, not JSON, nested too deeply
        return f"error: {e}"
    from runner.data import DataError
    if isinstance(e, DataError):
        return f"data error: {e}"
    sweep = sys.modules.get("runner.sweep")  # imported only if a verb used it (it pulls in Ray)
    if sweep is not None and isinstance(e, sweep.WorkerStartError):
        return f"ray error: {e}"
    return None
