#!/usr/bin/env bash
# Runs the whole pipeline for a range of days (default: the first week of 2025) as one single-run backfill.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
START="${1:-2025-01-01}"
END="${2:-2025-01-07}"
# dg reads the code location from [tool.dg] in pyproject.toml (batchinfer_assets.definitions).
dg launch --assets 'raw_transactions*' --partition-range "${START}...${END}"
python -m batchinfer_assets.summary "$START" "$END"
