#!/usr/bin/env bash
# Runs the test suite in the project virtualenv, with the system packages its whole-system tests drive.
bash "$(dirname "${BASH_SOURCE[0]}")/system_packages.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# Two workers: the whole-system tests spend most of their time waiting on the processes they drive. The Ray tests
# share one worker (`xdist_group`). BATCHINFER_TEST_WORKERS=0 runs everything in this process.
python -m pytest -n "${BATCHINFER_TEST_WORKERS:-2}" --dist loadgroup "$@"
