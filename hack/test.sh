#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Debian
# packages, Python packages from uv.lock, Go-built Kubernetes tools cached by
# version), then static checks (ruff, mypy, the import layers), then pytest
# against real servers.
# Extra arguments go to pytest, e.g. hack/test.sh tests/environment -x
set -euo pipefail
cd "$(dirname "$0")/.."

hack/bootstrap.sh
# What the tests before the end-to-end suite need, first. The real node's tools and KEDA, which only the
# end-to-end suite uses (it runs last), build in the background meanwhile: a cold run overlaps their builds
# with the other tests (tests/e2e/conftest.py waits for them; a warm run finds them cached at once).
hack/build-tools.sh kubernetes etcd kwok helm opentofu prometheus jaeger >/dev/null
node_tools=$(mktemp -d)/node-tools
(hack/build-tools.sh containerd coredns traefik kube-router keda pause >"$node_tools.log" 2>&1
 echo $? >"$node_tools.exit") &
export VEZA_TOOLS_PENDING=$node_tools

printf '\033[1m==> ruff\033[0m\n'
.venv/bin/ruff check .
printf '\033[1m==> mypy\033[0m\n'
.venv/bin/mypy
printf '\033[1m==> import layers\033[0m\n'
.venv/bin/lint-imports --no-cache --no-logo
printf '\033[1m==> pytest\033[0m\n'
# pytest exits 5 when no test ran; set -e makes that a failure too.
exec .venv/bin/pytest "$@"
