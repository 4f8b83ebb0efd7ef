#!/usr/bin/env bash
# Runs the test suite in the project virtualenv, with the system packages its whole-system tests drive.
bash "$(dirname "${BASH_SOURCE[0]}")/system_packages.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m pytest "$@"
