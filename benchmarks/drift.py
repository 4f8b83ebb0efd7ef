"""Time `compute_drift` on one big day: python benchmarks/drift.py [--rows 1000000] [--reference-rows 1000000].

Twenty columns like the model's inputs (14 continuous, 5 binary flags, 1 small count) plus nothing else;
the reference is as big as the day unless told otherwise, which is the worst case for the sorts behind
KS, Wasserstein and PSI.
"""

import argparse
import os
import time

import numpy as np
import pandas as pd

from batchinfer_assets.lib.drift import compute_drift, summarize_drift


def day(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    cols = {f"num{i}": rng.normal(shift if i < 3 else 0.0, 1.0, n).astype(np.float32) for i in range(14)}
    cols |= {f"flag{i}": (rng.random(n) < 0.3).astype(np.float32) for i in range(5)}
    cols["count"] = rng.poisson(3.0, n).clip(0, 12).astype(np.float32)
    return pd.DataFrame(cols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    current, reference = day(rng, args.rows, 0.2), day(rng, args.reference_rows, 0.0)
    columns = list(current.columns)
    print(f"{args.rows:,} x {len(columns)} against {args.reference_rows:,} rows, {os.cpu_count()} CPUs")
    for workers in (1, None):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            table = compute_drift(current, reference, columns, "r", max_workers=workers)
            times.append(time.perf_counter() - start)
        label = "1 thread" if workers == 1 else "threads = CPUs"
        print(f"{label:>15}: best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s")
    print(f"drifted: {summarize_drift(table).drifted_features}")


if __name__ == "__main__":
    main()
