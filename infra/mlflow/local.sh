#!/usr/bin/env bash
# A local MLflow tracking server on loopback: sqlite backend, artifacts proxied to a local folder or S3.
#
#   bash infra/mlflow/local.sh                                  # runs/mlflow-server/{mlflow.db,mlartifacts}
#   MLFLOW_ARTIFACTS=s3://my-bucket/mlflow bash infra/mlflow/local.sh   # artifacts in S3 (AWS_* from the env;
#                                                               # MLFLOW_S3_ENDPOINT_URL for MinIO or moto)
#   MLFLOW_PORT=5001 MLFLOW_DIR=/tmp/mlf bash infra/mlflow/local.sh
#
# Clients then use MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT (or --mlflow-uri); with
# --serve-artifacts they upload and download artifacts through the server and need no S3 credentials.
# Only 127.0.0.1 is bound: a server for others belongs behind basic-auth (infra/mlflow/README.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${MLFLOW_DIR:-$root/runs/mlflow-server}"
port="${MLFLOW_PORT:-5000}"
artifacts="${MLFLOW_ARTIFACTS:-$dir/mlartifacts}"
mlflow="${MLFLOW_BIN:-$root/.venv/bin/mlflow}"
mkdir -p "$dir"
echo "MLflow on http://127.0.0.1:$port  (backend sqlite:///$dir/mlflow.db, artifacts $artifacts)" >&2
exec "$mlflow" server \
    --backend-store-uri "sqlite:///$dir/mlflow.db" \
    --serve-artifacts --artifacts-destination "$artifacts" \
    --host 127.0.0.1 --port "$port" --workers "${MLFLOW_WORKERS:-1}"
