"""Say how two scorings of one day differ, row by row; no Dagster here."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def describe_difference(original: pa.Table, reproduced: pa.Table, id_column: str) -> str:
    """Row counts, the first row that differs (id, score, label, model), the largest |score diff|, labels changed."""
    notes = []
    if original.num_rows != reproduced.num_rows:
        notes.append(f"{reproduced.num_rows:,} rows where the original has {original.num_rows:,}")
    rows = min(original.num_rows, reproduced.num_rows)
    before = {name: original.column(name).slice(0, rows).to_numpy(zero_copy_only=False) for name in original.column_names}
    after = {
        name: reproduced.column(name).slice(0, rows).to_numpy(zero_copy_only=False)
        for name in original.column_names
        if name in reproduced.column_names
    }
    if set(after) != set(before):
        notes.append(f"columns {reproduced.column_names}, the original's {original.column_names}")
    same_id = before[id_column] == after[id_column] if id_column in after else np.zeros(rows, dtype=bool)
    differs = ~same_id
    for name in after:
        if name != id_column:
            differs |= before[name] != after[name]
    if differs.any():
        first = int(np.flatnonzero(differs)[0])
        changed = ", ".join(
            f"{name} {_plain(after[name][first])!r} (original {_plain(before[name][first])!r})"
            for name in after
            if before[name][first] != after[name][first]
        )
        notes.append(f"first differing row {first:,} ({id_column} {_plain(before[id_column][first])!r}): {changed}")
    if "score" in after and same_id.any():
        gap = np.abs(before["score"][same_id].astype(np.float64) - after["score"][same_id].astype(np.float64))
        notes.append(f"max |score diff| {float(gap.max()):.3g} over {int(same_id.sum()):,} rows with the same {id_column}")
    if "label" in after:
        notes.append(f"{int((before['label'] != after['label']).sum()):,} label(s) differ")
    if not differs.any() and original.num_rows == reproduced.num_rows:
        notes.append("every row and value is equal; only the files' bytes differ (Parquet layout or metadata)")
    return "; ".join(notes)


def _plain(value):
    return value.item() if hasattr(value, "item") else value
