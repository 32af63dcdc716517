#!/usr/bin/env bash
# Builds the Veza image here: the Debian-built base (mmdebstrap), then the Dockerfile with BuildKit,
# tagged veza:<content hash> and reused while the tree is unchanged; prints the tag.
#   hack/images.sh                      # veza:<hash>
#   hack/images.sh --tag veza:dev --save /tmp/veza.tar   # also a name, and a `docker save` archive
# Starts its own dockerd when no daemon answers (root); see docs/deploy.md, "The image".
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || hack/bootstrap.sh
exec .venv/bin/python -m veza_local.images "$@"
