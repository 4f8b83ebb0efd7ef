"""Time `compute_drift`, old code against new, on the shapes the drift asset sees.

    python benchmarks/drift.py [--rows 1000000] [--days 4] [--repeat 3]

Days have twenty columns like the model's inputs: 14 continuous, 5 binary flags and 1 small count
(Poisson(3), clipped to 0..12), all float32 as the feature tables store them. Cases:

(a) one day against a 20k-row reference (the training sample's size) and against a reference as big
    as the day (the worst case for the sorts), DataFrame in, DataFrame out, on 1 thread and on as many
    threads as CPUs;
(b) a range of ``--days`` days against one 20k-row reference, which the new code prepares once
    (``prepare_reference``) and the old code sorts again for every day;

The old code is ``batchinfer_assets/lib/drift.py`` as of ``--baseline-rev`` (read with ``git show``),
loaded as a module beside the new one, so both run in the same process on the same data. Each case
prints the best and median wall time of ``--repeat`` runs, and how the two tables differ.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from batchinfer_assets.lib import drift as new

# The last commit before drift statistics were computed from sorted arrays.
BASELINE_REV = "622d5ab"
REFERENCE_ROWS = 20_000


def day(rng: np.random.Generator, n: int, shift: float = 0.0, count_shift: float = 0.0) -> pd.DataFrame:
    """One day: num0..num2 move by ``shift`` stds; ``count_shift`` of the rows count one more."""
    cols = {f"num{i}": rng.normal(shift if i < 3 else 0.0, 1.0, n).astype(np.float32) for i in range(14)}
    cols |= {f"flag{i}": (rng.random(n) < 0.3).astype(np.float32) for i in range(5)}
    count = rng.poisson(3.0, n) + (rng.random(n) < count_shift)
    cols["count"] = count.clip(0, 12).astype(np.float32)
    return pd.DataFrame(cols)


def load_baseline(rev: str):
    """The drift module as of ``rev``, imported under another name."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:batchinfer_assets/lib/drift.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "drift_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("drift_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Best and median wall seconds of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), sorted(times)[len(times) // 2], result


def compare(old_tables: list[pd.DataFrame], new_tables: list[pd.DataFrame]) -> str:
    """How the new tables differ from the old: statistics changed, largest value difference elsewhere."""
    old_t, new_t = pd.concat(old_tables, ignore_index=True), pd.concat(new_tables, ignore_index=True)
    same = (old_t["statistic"] == new_t["statistic"]).to_numpy()
    pairs = zip(old_t["feature"], old_t["statistic"], new_t["statistic"])
    changed = sorted({f"{f}: {a} -> {b}" for f, a, b in pairs if a != b})
    diffs = []
    for col in ("value", "p_value", "psi"):
        a, b = old_t[col].to_numpy()[same], new_t[col].to_numpy()[same]
        both = ~(np.isnan(a) | np.isnan(b))
        if both.any():
            diffs.append(np.max(np.abs(a[both] - b[both]) / np.maximum(np.abs(a[both]), 1e-300)))
    verdicts = (old_t["drifted"] == new_t["drifted"]).to_numpy()[same].all()
    worst = max(diffs, default=0.0)
    text = f"same statistic: max relative difference {worst:.1e}, verdicts {'equal' if verdicts else 'DIFFER'}"
    return text + (f"; statistic changed: {', '.join(changed)}" if changed else "")


def drifted(tables: list[pd.DataFrame]) -> str:
    return "; ".join(",".join(t.loc[t["drifted"], "feature"]) or "-" for t in tables)


def row(label: str, old: tuple[float, float], new_: tuple[float, float]) -> None:
    print(
        f"  {label:<38} old best {old[0]:6.2f} s  median {old[1]:6.2f} s | "
        f"new best {new_[0]:6.2f} s  median {new_[1]:6.2f} s | x{old[0] / new_[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per day")
    parser.add_argument("--days", type=int, default=4, help="days in the range of (b) and (c)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args()
    old = load_baseline(args.baseline_rev)

    rng = np.random.default_rng(0)
    current = day(rng, args.rows, 0.2, 0.3)
    training = day(rng, REFERENCE_ROWS)
    big_reference = day(rng, args.rows)
    columns = list(current.columns)
    print(
        f"{os.cpu_count()} CPUs; {args.rows:,} rows x {len(columns)} columns a day; "
        f"old = {args.baseline_rev}, repeat {args.repeat}"
    )

    print("(a) one day against one reference (DataFrames)")
    references = {f"{REFERENCE_ROWS:,}-row reference": training, f"{args.rows:,}-row reference": big_reference}
    for name, reference in references.items():
        for workers, label in ((1, "1 thread"), (None, "threads = CPUs")):
            o = timed(lambda: old.compute_drift(current, reference, columns, "r", max_workers=workers), args.repeat)
            n = timed(lambda: new.compute_drift(current, reference, columns, "r", max_workers=workers), args.repeat)
            row(f"{name}, {label}", o[:2], n[:2])
        print(f"    {compare([o[2]], [n[2]])}")
        print(f"    drifted: old {drifted([o[2]])} | new {drifted([n[2]])}")

    # The range: num0..num2 drift a little more each day; the count shifts on the last day only.
    days = [
        day(rng, args.rows, 0.05 * d, 0.3 if d == args.days - 1 else 0.0) for d in range(args.days)
    ]
    print(f"(b) {args.days} days x {args.rows:,} rows against one {REFERENCE_ROWS:,}-row reference, threads = CPUs")

    def old_range():
        return [old.compute_drift(d, training, columns, "training") for d in days]

    def new_range():
        prepared = new.prepare_reference(training, columns)
        return [new.compute_drift(d, prepared, columns, "training") for d in days]

    o, n = timed(old_range, args.repeat), timed(new_range, args.repeat)
    row(f"{args.days}-day range", o[:2], n[:2])
    print(f"    {compare(o[2], n[2])}")
    print(f"    drifted by day: old {drifted(o[2])} | new {drifted(n[2])}")


if __name__ == "__main__":
    main()
