"""`Unsupported`: a variant that cannot run on this device; its message becomes the `skipped` row's reason.

Its own module so that runner/optimize.py and runner/fused.py (which optimize imports only for
`compile: fused`, as it pulls in Triton) both raise it without importing each other.
"""


class Unsupported(Exception):
    """This variant cannot run (meaningfully) on this device; the message is the skip reason."""
