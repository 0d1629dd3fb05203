"""`python -m runner <verb>`: see runner/cli.py (`python -m runner --help` lists the verbs)."""
import sys

from runner.engine.control import plain_output

plain_output()  # before anything imports ray: a log file gets no escape codes (runner/engine/control.py)
from runner.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
