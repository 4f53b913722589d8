#!/usr/bin/env bash
# Builds the image from deploy/Dockerfile with podman and tags it localhost/inspector-keyd:dev,
# as CI does (tests/pod.rs runs this, then runs the pod). Needs root and podman (installed by
# scripts/install-test-tools.sh).
#
# No container registry is reachable where the tests run, so neither of the Dockerfile's two
# base images can be pulled; the build arguments swap them for local equivalents:
#   BINARY=prebuilt       instead of building in rust:…-bookworm, the image takes the binary
#                         `cargo build --release --locked --bin inspector-keyd` built here
#                         (or KEYD_IMAGE_BINARY=<path>, a binary already built that way);
#   RUNTIME_IMAGE=localhost/inspector-keyd-base:dev
#                         instead of distroless cc-debian12:nonroot, a base assembled FROM
#                         scratch from the files distroless cc has, taken from this
#                         machine's Debian packages: glibc (libc6), libgcc (libgcc-s1), the CA
#                         bundle (ca-certificates), /etc/passwd and /etc/group with root,
#                         nobody and nonroot (65532), /etc/nsswitch.conf and /tmp. The
#                         packages are downloaded once into .tools/image-base/ (delete it to
#                         take newer ones).
#
# Podman runs with the settings written to .tools/podman/ (CONTAINERS_CONF and
# CONTAINERS_STORAGE_CONF point at them; the system's files are neither read nor changed):
# its own storage there, runc with cgroupfs (crun fails on hybrid cgroups), no default
# RLIMIT_NOFILE ulimit (it cannot be set here), and no network (no bridge, no firewall rules:
# containers and pods get only their own loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

IMAGE=localhost/inspector-keyd:dev
BASE_IMAGE=localhost/inspector-keyd-base:dev
PODMAN_DIR=$root/.tools/podman
BASE_DIR=$root/.tools/image-base

command -v podman >/dev/null || {
  echo "podman is missing: run scripts/install-test-tools.sh" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || {
  echo "build-image.sh runs podman as root (the pod's uids 10001 and 10002 need no mapping)" >&2
  exit 1
}

# Podman's settings. Its run state (tmp_dir, runroot) is in .tools/podman too, not on a
# tmpfs, so it would outlive a reboot: after one, the whole directory is started afresh.
boot_id=$(cat /proc/sys/kernel/random/boot_id)
if [ -d "$PODMAN_DIR" ] && [ "$(cat "$PODMAN_DIR/boot_id" 2>/dev/null)" != "$boot_id" ]; then
  rm -rf "$PODMAN_DIR"
fi
mkdir -p "$PODMAN_DIR"
echo "$boot_id" > "$PODMAN_DIR/boot_id"
# overlay, unless .tools is itself on overlayfs (which overlay cannot be stacked on).
driver=overlay
[ "$(stat -f -c %T "$PODMAN_DIR")" = overlayfs ] && driver=vfs
cat > "$PODMAN_DIR/containers.conf" <<EOF
# Written by scripts/build-image.sh for it and tests/pod.rs (CONTAINERS_CONF).
[containers]
# The default RLIMIT_NOFILE ulimit cannot be set here.
default_ulimits = []
# No bridge, no firewall rules: a container or pod has only its own loopback.
netns = "none"

[engine]
# crun fails on the hybrid cgroup hierarchy; runc with cgroupfs (no systemd) works.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$PODMAN_DIR/tmp"

[network]
network_config_dir = "$PODMAN_DIR/networks"
EOF
cat > "$PODMAN_DIR/storage.conf" <<EOF
# Written by scripts/build-image.sh for it and tests/pod.rs (CONTAINERS_STORAGE_CONF).
[storage]
driver = "$driver"
graphroot = "$PODMAN_DIR/storage-$driver"
runroot = "$PODMAN_DIR/run"
EOF
export CONTAINERS_CONF=$PODMAN_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf

# The binary.
if [ -n "${KEYD_IMAGE_BINARY:-}" ]; then
  binary=$KEYD_IMAGE_BINARY
  echo "build-image: binary $binary (KEYD_IMAGE_BINARY)"
else
  cargo build --release --locked --bin inspector-keyd
  binary=${CARGO_TARGET_DIR:-target}/release/inspector-keyd
fi
[ -x "$binary" ] || {
  echo "no binary at $binary" >&2
  exit 1
}

# The runtime base, FROM scratch.
packages="libc6 libgcc-s1 ca-certificates"
mkdir -p "$BASE_DIR/debs"
for package in $packages; do
  if ! compgen -G "$BASE_DIR/debs/${package}_*.deb" >/dev/null; then
    (cd "$BASE_DIR/debs" && apt-get download "$package" >/dev/null 2>&1) \
      || { apt-get update -qq && (cd "$BASE_DIR/debs" && apt-get download "$package"); }
  fi
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/base/rootfs
mkdir -p "$rootfs"
for deb in "$BASE_DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$rootfs"; done
# Documentation aside from the licences; the CA bundle as update-ca-certificates makes it.
find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
rm -rf "$rootfs/usr/share/man" "$rootfs/usr/share/lintian" "$rootfs/usr/sbin" "$rootfs/etc/ca-certificates.conf"
mkdir -p "$rootfs/etc/ssl/certs"
cat "$rootfs"/usr/share/ca-certificates/mozilla/*.crt > "$rootfs/etc/ssl/certs/ca-certificates.crt"
cat > "$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > "$rootfs/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
mkdir -p "$rootfs/tmp" "$rootfs/root" "$rootfs/home/nonroot" "$rootfs/var/lib" "$rootfs/run"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root" "$rootfs/home/nonroot"
versions=$(for deb in "$BASE_DIR"/debs/*.deb; do dpkg-deb -W --showformat='${Package}=${Version} ' "$deb"; done)
versions=${versions% }
cat > "$work/base/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 rootfs/home/nonroot /home/nonroot
LABEL org.opencontainers.image.description="local stand-in for distroless cc-debian12:nonroot: $versions"
USER 65532:65532
EOF
echo "build-image: RUNTIME_IMAGE=$BASE_IMAGE, assembled FROM scratch from $versions (stands in for distroless cc-debian12:nonroot, which cannot be pulled here)"
podman build --quiet --pull=never --network none -t "$BASE_IMAGE" "$work/base" >/dev/null

# The image, from deploy/Dockerfile, with a build context of the files it copies.
context=$work/context
# Stripped of its symbols, as the Dockerfile strips the binary it builds.
install -D -s -m 0755 "$binary" "$context/prebuilt/usr/local/bin/inspector-keyd"
install -d -m 0750 "$context/prebuilt/var/lib/inspector-keyd" "$context/prebuilt/run/inspector-keyd"
install -D -m 0644 deploy/k8s/base/config.toml "$context/deploy/k8s/base/config.toml"
install -D -m 0644 deploy/k8s/base/rules.toml "$context/deploy/k8s/base/rules.toml"
echo "build-image: BINARY=prebuilt, $binary (stands in for the build in rust:…-bookworm, which cannot be pulled here)"
podman build --quiet --pull=never --network none -f deploy/Dockerfile \
  --build-arg BINARY=prebuilt --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$context" >/dev/null
# Earlier builds' images, now untagged.
podman image prune --force >/dev/null

podman run --rm --network none "$IMAGE" --version
echo "image $IMAGE $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
