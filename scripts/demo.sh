#!/usr/bin/env bash
# The main job: installs into .venv/ if needed, then runs the benchmark on the embedded default
# (local Ray, synthetic demo data under runs/, sqlite MLflow store in runs/mlflow.db).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/python pipelines/full_benchmark.py "$@"
