#!/usr/bin/env bash
# Runs the test suite in the project virtualenv.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m pytest "$@"
