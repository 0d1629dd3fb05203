"""Measurement checks a user runs by hand on a GPU machine (not part of a sweep).

    python -m runner crosscheck      our batch-1 timer against an independent one
    python -m runner exclusivity     the bench notices a second process on its GPU

`nvml` is the one place that talks to NVML (also used by every sweep row through `runner.env`);
`table` is the one fixed-width table printer of their console output. Importing this package is cheap:
neither torch nor pynvml is imported until a check runs.
"""
