#!/usr/bin/env bash
# Creates .venv/ under the repo and installs the project with its test and cluster extras.
# Re-running is cheap: it reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || { echo "bootstrap: $python not found (Python 3.11 is required; set PYTHON=...)" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing into $venv (first run takes a few minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  # torch first and on its own: pip resolves it from the local wheel cache where one is configured.
  "$venv/bin/python" -m pip install -q "torch>=2.2" "torchvision>=0.17"
  "$venv/bin/python" -m pip install -q -e "$root[dev]"
  rm -f "$venv"/.installed-* && touch "$stamp"
fi
