"""The engine: what runs a sweep on a Ray cluster (training tasks, one benchmark actor per GPU, the driver's
schedule). `runner/sweep.py` is its entry; the measurement itself (prepare, time, check) lives in
runner/optimize.py, runner/bench.py and runner/evaluate.py, and the engine only decides where and when."""
