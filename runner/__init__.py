"""The engine: one module per step of a sweep (see ARCHITECTURE in README.md)."""
