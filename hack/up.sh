#!/usr/bin/env bash
# Runs the whole platform locally from the CR YAMLs in examples/ (see `veza up --help`, docs/local.md).
# Installs its runtime dependencies first. Extra arguments go to `veza up`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/pytest ]; then
  hack/bootstrap.sh            # a development checkout: keep the dev dependencies (`--runtime` would remove them)
else
  hack/bootstrap.sh --runtime
fi
exec .venv/bin/veza up "$@"
