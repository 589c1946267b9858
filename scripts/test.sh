#!/usr/bin/env bash
# The test command: installs what it needs into .venv/, lints, then runs the whole suite on CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# What the suite's processes leave in the temp folder (MLflow's sqlite init locks, torch's pymp-* folders,
# pytest's basetemp) goes into one folder of this run, removed when it ends, pass or fail.
scratch="$(mktemp -d /tmp/ct.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
TMPDIR="$scratch" .venv/bin/python -m pytest "$@"
