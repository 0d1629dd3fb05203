"""The runner: the measurement, the sweep on Ray (engine/), the report and the CLI (README, "Layout")."""
