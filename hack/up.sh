#!/usr/bin/env bash
# Runs the whole platform locally from the CR YAMLs in examples/ (see `veza up --help`).
# Installs its runtime dependencies first. Extra arguments go to `veza up`.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/bootstrap.sh --runtime
exec .venv/bin/veza up "$@"
