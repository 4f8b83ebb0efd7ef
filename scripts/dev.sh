#!/usr/bin/env bash
# Starts the Dagster UI and daemon (`dg dev`, the successor of `dagster dev`) on the project's instance:
# DAGSTER_HOME (default .batchinfer/dagster) with the repo's dagster.yaml, the same instance
# scripts/run_week.sh records its runs in. Arguments go to `dg dev` (e.g. `-p 3001`).
# Stop it with Ctrl-C, or `kill <pid>` (SIGTERM or SIGINT): every process it started exits in seconds.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# Started with `&` from a non-interactive shell (a script, CI, a test harness), a process inherits SIGINT
# *ignored*, and a shell cannot undo that. Dagster then ignores SIGTERM too (it gives SIGTERM SIGINT's
# handler) and its shutdown message to the webserver and daemon (a SIGINT to themselves) does nothing:
# nothing stops until SIGKILL. Restoring SIGINT's default before the exec makes Python turn SIGINT and
# SIGTERM into Dagster's clean shutdown, in this process and in every child it starts.
exec python -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' dg dev "$@"
