#!/usr/bin/env bash
# Runs the whole pipeline for a range of days as one single-run backfill, in this process, then prints
# where each day landed. Default range: the 7 most recent complete UTC days (yesterday and the 6 before).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
if [ $# -ne 0 ] && [ $# -ne 2 ]; then
  echo "usage: $0 [START END]   (days as YYYY-MM-DD, UTC; default: the last 7 complete days)" >&2
  exit 2
fi
if [ $# -eq 2 ]; then
  START="$1" END="$2"
else
  read -r START END < <(python -c 'import datetime as d
yesterday = d.datetime.now(d.timezone.utc).date() - d.timedelta(days=1)
print(yesterday - d.timedelta(days=6), yesterday)')
fi
# dg reads the code location from [tool.dg] in pyproject.toml (batchinfer_assets.definitions). The job is
# every pipeline asset and its checks, but not the freshness checks: those are judged by their sensor.
dg launch --job daily_scoring_job --partition-range "${START}...${END}"
python -m batchinfer_assets.summary "$START" "$END"
