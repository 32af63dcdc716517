#!/usr/bin/env bash
# Builds the Go tools the tests need (Kubernetes control plane and node, etcd,
# kwok, helm, OpenTofu, containerd, CoreDNS, Traefik, kube-router, Prometheus,
# Jaeger, KEDA, the pod sandbox program)
# from the pinned wrapper modules in hack/tools/*, and caches
# the binaries under $VEZA_CACHE/bin/<tool>-<version>. A second run builds
# nothing. Prints the directory holding the binaries on its last line.
#
#   hack/build-tools.sh [tool ...]   # default: all of them
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${VEZA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/veza}
bin=$cache/bin
mkdir -p "$bin"

# One line per tool: name, wrapper module dir, version, packages, ldflags.
KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4
TOFU_VERSION=v1.11.6
CONTAINERD_VERSION=v2.3.7
COREDNS_VERSION=v1.14.7
TRAEFIK_VERSION=v3.6.12
PROMETHEUS_VERSION=v3.16.0  # hack/tools/prometheus pins the module's v0.316.0 (= Prometheus 3.16.0)
KUBE_ROUTER_VERSION=v2.1.0
JAEGER_VERSION=v1.76.0  # the module's v1.x tags carry Jaeger v2 (cmd/jaeger, built on the OpenTelemetry collector)
KEDA_VERSION=v2.21.0
PAUSE_VERSION=1.0  # hack/tools/pause: bump when main.go changes
# CRDs only (nothing is built): CloudNativePG's, and its Barman Cloud Plugin's ObjectStore, for the tests of
# platforms naming a CloudNativePG Cluster and of examples/cloudnative-pg.
CNPG_VERSION=v1.30.0
BARMAN_CLOUD_VERSION=v0.14.0

kube_minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$kube_minor"
# helm assumes Kubernetes 1.20 for `helm template` unless told the version it targets.
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kube_minor"

have() { [ -x "$bin/$1-$2" ]; }

# build NAME VERSION MODULE_DIR LDFLAGS EXE=PKG...  (all packages in one `go build`)
build() {
  local name=$1 version=$2 dir=$3 ldflags=$4; shift 4
  local missing=() names=()
  for spec in "$@"; do
    local exe=${spec%%=*} pkg=${spec#*=}
    have "$exe" "$version" || { missing+=("$pkg"); names+=("$exe"); }
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "building $name $version: ${missing[*]}" >&2
  local out; out=$(mktemp -d "$cache/build.XXXXXX")
  local start=$SECONDS
  (cd "$here/tools/$dir" && CGO_ENABLED=0 go build -trimpath ${GO_TAGS:+-tags "$GO_TAGS"} -ldflags "$ldflags" -o "$out/" "${missing[@]}")
  # go names each binary after its package path's last element (or the one
  # before a /vN suffix); map them back to the names we asked for.
  local i
  for i in "${!missing[@]}"; do
    local pkg=${missing[$i]} built
    built=$(basename "$pkg"); [[ $built =~ ^v[0-9]+$ ]] && built=$(basename "$(dirname "$pkg")")
    mv "$out/$built" "$bin/${names[$i]}-$version"
  done
  rmdir "$out"
  echo "built $name $version in $((SECONDS - start)) s" >&2
}

want=${*:-kubernetes etcd kwok helm opentofu containerd coredns traefik kube-router prometheus jaeger keda pause}
for tool in $want; do
  case $tool in
    kubernetes) build kubernetes "$KUBE_VERSION" kubernetes "$kube_ldflags" \
        kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
        kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
        kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler kubectl=k8s.io/kubernetes/cmd/kubectl \
        kubelet=k8s.io/kubernetes/cmd/kubelet kube-proxy=k8s.io/kubernetes/cmd/kube-proxy ;;
    etcd) build etcd "$ETCD_VERSION" etcd "-s -w" etcd=go.etcd.io/etcd/server/v3 ;;
    kwok) build kwok "$KWOK_VERSION" kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" kwok=sigs.k8s.io/kwok/cmd/kwok ;;
    helm) build helm "$HELM_VERSION" helm "$helm_ldflags" helm=helm.sh/helm/v3/cmd/helm ;;
    opentofu) build opentofu "$TOFU_VERSION" opentofu "-s -w" tofu=github.com/opentofu/opentofu/cmd/tofu ;;
    # The real node's container runtime (design: its own config, socket and root; never Docker's).
    containerd) GO_TAGS=no_btrfs,no_devmapper,no_zfs build containerd "$CONTAINERD_VERSION" containerd \
        "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
        containerd=github.com/containerd/containerd/v2/cmd/containerd \
        containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
        ctr=github.com/containerd/containerd/v2/cmd/ctr ;;
    coredns) build coredns "$COREDNS_VERSION" coredns "-s -w" coredns=github.com/coredns/coredns ;;
    traefik) build traefik "$TRAEFIK_VERSION" traefik "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
        traefik=github.com/traefik/traefik/v3/cmd/traefik ;;
    # The real node's NetworkPolicy engine (only its firewall controller runs).
    kube-router) build kube-router "$KUBE_ROUTER_VERSION" kube-router \
        "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
        kube-router=github.com/cloudnativelabs/kube-router/v2/cmd/kube-router ;;
    # Prometheus and promtool evaluate the chart's alerts and dashboard queries in tests (static scrape
    # configs only: no service discovery compiled in, half the build).
    prometheus) GO_TAGS=remove_all_sd build prometheus "$PROMETHEUS_VERSION" prometheus \
        "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}" \
        prometheus=github.com/prometheus/prometheus/cmd/prometheus \
        promtool=github.com/prometheus/prometheus/cmd/promtool ;;
    # The trace store the tracing tests export to (OTLP) and query.
    jaeger) build jaeger "$JAEGER_VERSION" jaeger "-s -w" jaeger=github.com/jaegertracing/jaeger/cmd/jaeger ;;
    # The autoscaler of the end-to-end tests: the platform's ScaledObjects scale workers on their own metrics.
    keda) build keda "$KEDA_VERSION" keda "-s -w -X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}" \
        keda=github.com/kedacore/keda/v2/cmd/operator keda-adapter=github.com/kedacore/keda/v2/cmd/adapter ;;
    pause) build pause "$PAUSE_VERSION" pause "-s -w" pause=veza.dev/hack/tools/pause ;;
    *) echo "unknown tool: $tool" >&2; exit 2 ;;
  esac
done

# kwok does nothing without Stage configs; its module ships the standard ones
# (fast node start, node heartbeat with Lease, fast pod lifecycle). Assemble them
# into one config file next to the binary.
kwok_stages=$bin/kwok-$KWOK_VERSION-stages.yaml
if [[ -x $bin/kwok-$KWOK_VERSION && ! -s $kwok_stages ]]; then
  kwok_dir=$(cd "$here/tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  stage=$kwok_dir/kustomize/stage
  for f in "$stage"/node/fast/node-initialize.yaml \
           "$stage"/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           "$stage"/pod/fast/pod-ready.yaml "$stage"/pod/fast/pod-complete.yaml "$stage"/pod/fast/pod-delete.yaml; do
    echo "---"; cat "$f"
  done > "$kwok_stages.tmp"
  mv "$kwok_stages.tmp" "$kwok_stages"
fi
ln -sf "kwok-$KWOK_VERSION-stages.yaml" "$bin/kwok-stages.yaml"

# The Gateway API CRDs (standard channel) at the version Traefik implements, from its module (read from
# Traefik's wrapper module: nothing is built; the operator tests install them before Traefik is built).
gw_version=$(cd "$here/tools/traefik" && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api)
gw_crds=$bin/gateway-api-$gw_version-crds.yaml
if [[ ! -s $gw_crds ]]; then
  gw_dir=$(cd "$here/tools/traefik" && go mod download -json sigs.k8s.io/gateway-api | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  for f in "$gw_dir"/config/crd/standard/*.yaml; do echo "---"; cat "$f"; done > "$gw_crds.tmp"
  mv "$gw_crds.tmp" "$gw_crds"
fi
ln -sf "gateway-api-$gw_version-crds.yaml" "$bin/gateway-api-crds.yaml"

# KEDA's install manifest (CRDs, RBAC, operator, metrics server, APIService; no admission webhooks) from its
# module's kustomization, rendered with the kubectl built above; veza_local.keda points it at local images.
if [[ -x $bin/keda-$KEDA_VERSION && -x $bin/kubectl-$KUBE_VERSION ]]; then
  keda_install=$bin/keda-$KEDA_VERSION-install.yaml
  if [[ ! -s $keda_install ]]; then
    keda_dir=$(cd "$here/tools/keda" && go list -m -f '{{.Dir}}' github.com/kedacore/keda/v2)
    "$bin/kubectl-$KUBE_VERSION" kustomize "$keda_dir/config/minimal" > "$keda_install.tmp"
    mv "$keda_install.tmp" "$keda_install"
  fi
  ln -sf "keda-$KEDA_VERSION-install.yaml" "$bin/keda-install.yaml"
fi

# CloudNativePG's CRDs (Cluster, Backup, ScheduledBackup) and the Barman Cloud Plugin's ObjectStore, from
# their Go modules (`go mod download` of a tagged version: no build, no wrapper module), cached by version.
cnpg_crds=$bin/cloudnative-pg-$CNPG_VERSION-barman-cloud-$BARMAN_CLOUD_VERSION-crds.yaml
if [[ ! -s $cnpg_crds ]]; then
  module_dir() { (cd "$cache" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'); }
  cnpg_dir=$(module_dir "github.com/cloudnative-pg/cloudnative-pg@$CNPG_VERSION")
  barman_dir=$(module_dir "github.com/cloudnative-pg/plugin-barman-cloud@$BARMAN_CLOUD_VERSION")
  for f in "$cnpg_dir"/config/crd/bases/postgresql.cnpg.io_{clusters,backups,scheduledbackups}.yaml \
           "$barman_dir"/config/crd/bases/barmancloud.cnpg.io_objectstores.yaml; do
    echo "---"; cat "$f"
  done > "$cnpg_crds.tmp"
  mv "$cnpg_crds.tmp" "$cnpg_crds"
fi
ln -sf "$(basename "$cnpg_crds")" "$bin/cloudnative-pg-crds.yaml"

# Stable names (kube-apiserver, etcd, helm, ...) pointing at the pinned versions.
link() { ln -sf "$1-$2" "$bin/$1"; }
link kube-apiserver "$KUBE_VERSION"; link kube-controller-manager "$KUBE_VERSION"
link kube-scheduler "$KUBE_VERSION"; link kubectl "$KUBE_VERSION"
link kubelet "$KUBE_VERSION"; link kube-proxy "$KUBE_VERSION"
for exe in containerd containerd-shim-runc-v2 ctr; do link "$exe" "$CONTAINERD_VERSION"; done
link coredns "$COREDNS_VERSION"; link traefik "$TRAEFIK_VERSION"; link pause "$PAUSE_VERSION"
link prometheus "$PROMETHEUS_VERSION"; link promtool "$PROMETHEUS_VERSION"
link kube-router "$KUBE_ROUTER_VERSION"; link jaeger "$JAEGER_VERSION"
link keda "$KEDA_VERSION"; link keda-adapter "$KEDA_VERSION"
link etcd "$ETCD_VERSION"; link kwok "$KWOK_VERSION"; link helm "$HELM_VERSION"; link tofu "$TOFU_VERSION"
echo "$bin"
