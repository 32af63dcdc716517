#!/usr/bin/env bash
# Installs what Veza needs on a fresh Debian machine, idempotently:
# uv (pinned), the Python environment from uv.lock, and Debian packages.
#   hack/bootstrap.sh            # runtime + dev dependencies
#   hack/bootstrap.sh --runtime  # what `veza up` needs only
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
# What the platform needs to run (`veza up`), and what only the tests need on top.
APT_PACKAGES=(redis-server libmp3lame0 libopus0)
APT_DEV_PACKAGES=(chromium libshout3 ffmpeg)  # the browser test; Icecast source clients for the ingest tests
# The end-to-end suite's real node: runc, CNI plugins, what kube-proxy, kube-router (NetworkPolicies)
# and the network setup call.
APT_DEV_PACKAGES+=(runc containernetworking-plugins conntrack iptables ipset iproute2)
# The image tests: a container engine (Debian's, with BuildKit) and mmdebstrap for the Debian base image.
APT_DEV_PACKAGES+=(docker.io mmdebstrap)
[ "${1:-}" = --runtime ] || APT_PACKAGES+=("${APT_DEV_PACKAGES[@]}")

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null
    as_root apt-get install -y -q "${missing[@]}" >/dev/null
  }
  # Debian starts the system Redis on install; Veza runs its own instances.
  as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  log "pip install uv==$UV_VERSION"
  python3 -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi

log "uv sync --frozen (Python packages from uv.lock)"
if [ "${1:-}" = --runtime ]; then
  uv sync --frozen --no-dev -q
else
  uv sync --frozen -q
fi
