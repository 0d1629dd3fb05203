"""How long are the host's slow phases? Cut each eager repeat of this run into pieces and count slow ones.

    python3 reports/h200-1gpu-default/slow_pieces.py [--pieces 10] [--slow 1.15]

Reads samples/<variant>.parquet (every timed call of the sweep at 0b0a882 on one H200), keeps the eager
variants (no CUDA graph, no compile), cuts each repeat's 500 calls into `--pieces` pieces in time order,
and prints every piece whose p50 reads `--slow` times its variant's p50 or more.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pieces", type=int, default=10)
    ap.add_argument("--slow", type=float, default=1.15)
    args = ap.parse_args()
    total, slow = 0, []
    for f in sorted((HERE / "samples").glob("*.parquet")):
        vid = f.stem
        if "graph" in vid or vid.endswith("-ro") or "inductor" in vid:
            continue
        s = pd.read_parquet(f)
        median = s["lat_ms"].median()
        for rep, g in s.groupby("repeat"):
            for i, piece in enumerate(np.array_split(g.sort_values("iter")["lat_ms"].to_numpy(), args.pieces)):
                total += 1
                if np.median(piece) / median >= args.slow:
                    slow.append((vid, int(rep), i, round(float(np.median(piece) / median), 2)))
    print(f"{len(slow)} of {total} pieces read >= {args.slow}x their variant's p50")
    for row in slow:
        print("  %-34s repeat %d piece %d: %.2fx" % row)


if __name__ == "__main__":
    main()
