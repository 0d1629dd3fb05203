"""`python -m runner <verb>`: see runner/cli.py (`python -m runner --help` lists the verbs)."""
import sys

from runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
