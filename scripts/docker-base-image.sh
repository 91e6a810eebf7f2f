#!/usr/bin/env bash
# Makes sure a Debian bookworm base image for docker/Dockerfile exists, and prints its name as the
# only line on stdout (progress goes to stderr), so callers can do
#   base=$(scripts/docker-base-image.sh)
#   docker build --build-arg BASE_IMAGE="$base" docker
#
# In order:
#   1. $YOSEGI_BASE_IMAGE (default debian:bookworm-slim) is already in the engine: use it.
#   2. yosegi-base:bookworm, built by an earlier run of this script, is there: use it.
#   3. `docker pull $YOSEGI_BASE_IMAGE` works (a machine with a registry): use it.
#   4. No registry (an air-gapped engine, or a CI machine that only reaches Debian's package
#      mirror): build a minimal bookworm root filesystem with debootstrap and `docker import` it
#      as yosegi-base:bookworm. Needs root (or sudo) and a Debian mirror.
#
# The binaries staged into the image are built on the host; on a Debian 12 host (glibc 2.36) they
# run on a bookworm base. They link only libc, libm and libgcc_s, all of which minbase has.
#
# Environment:
#   YOSEGI_BASE_IMAGE      image to prefer (default debian:bookworm-slim)
#   YOSEGI_DEBIAN_MIRROR   mirror for debootstrap (default: the host's apt mirror for Debian's main
#                          archive if it has one, else http://deb.debian.org/debian)
#   YOSEGI_PULL_TIMEOUT    seconds to give `docker pull` before giving up on it (default 120)
set -euo pipefail

want=${YOSEGI_BASE_IMAGE:-debian:bookworm-slim}
self=yosegi-base:bookworm
suite=bookworm

log() { echo "docker-base-image: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

command -v docker >/dev/null 2>&1 || die "docker is not installed (no 'docker' on PATH)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine ('docker info' failed); is the daemon running, may this user use it?"

have() { docker image inspect "$1" >/dev/null 2>&1; }

for img in "$want" "$self"; do
  if have "$img"; then
    log "using $img (already present)"
    echo "$img"
    exit 0
  fi
done

# A registry may be there: try it, but bounded, because an engine with no network can hang on DNS.
log "pulling $want"
if timeout "${YOSEGI_PULL_TIMEOUT:-120}" docker pull "$want" >&2 && have "$want"; then
  log "using $want (pulled)"
  echo "$want"
  exit 0
fi
log "cannot pull $want (no registry reachable?); building $self with debootstrap instead"

# Root is needed for debootstrap (it chroots, makes device nodes and sets owners).
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "debootstrap needs root and sudo is not installed; run this script as root"
  sudo=(sudo)
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and there is no apt-get to install it; install debootstrap, or load a bookworm image with 'docker load'"
  log "installing debootstrap with apt-get"
  "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2 ||
    die "apt-get install debootstrap failed"
fi

# The mirror the host's apt already uses for Debian's main archive works from here (a machine
# may reach only that one); deb.debian.org otherwise.
host_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    # one-line style: "deb [opts] URI suite comp"; deb822 style: "URIs: URI"
    sed -n -e 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\(http[^[:space:]]*\).*/\2/p' \
      -e 's/^URIs:[[:space:]]*\(http[^[:space:]]*\).*/\1/p' "$f"
  done | grep -E '/debian/?$' | head -n 1
}
mirror=${YOSEGI_DEBIAN_MIRROR:-$(host_mirror || true)}
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/yosegi-rootfs.XXXXXX")
cleanup() {
  # debootstrap mounts proc and sys inside the target while it works; a failed run can leave them
  # mounted, and rm must never walk into the host's /proc or /sys through them.
  local m
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$rootfs/$m" 2>/dev/null; then "${sudo[@]}" umount -l "$rootfs/$m" || true; fi
  done
  "${sudo[@]}" rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

log "debootstrap --variant=minbase $suite from $mirror (a few minutes)"
start=$(date +%s)
"${sudo[@]}" debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 30 "$rootfs.log" >&2
  rm -f "$rootfs.log"
  die "debootstrap of $suite from $mirror failed (log above)"
}
rm -f "$rootfs.log"

# Smaller image: the package cache and lists are of no use in a runtime image.
"${sudo[@]}" rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log

log "importing as $self"
"${sudo[@]}" tar -C "$rootfs" --numeric-owner -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite $mirror" \
    - "$self" >&2 || die "docker import of the $suite root filesystem failed"
have "$self" || die "docker import reported success but $self is not in the engine"
log "built $self in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$self") bytes)"
echo "$self"
