#!/usr/bin/env bash
# The docker-compose demo, end to end: build the two binaries on the host, stage them into
# docker/bin/, make sure a bookworm base image exists (scripts/docker-base-image.sh), run
#   docker compose up --build --abort-on-container-exit --exit-code-from operator
# and copy the operator's output (the merged model, its manifest, the rounds as JSON) out of the
# `model` volume. Exits with the operator's exit code. See docs/COMPOSE.md.
#
# Volumes are kept between runs (a second run enrolls nothing new and queues three more rounds);
# `docker compose down -v` (with the same project name) resets everything.
#
# Environment:
#   YOSEGI_PROFILE        release (default): cargo build --release -p coordinator -p party-client
#                         debug: cargo test --workspace --locked --no-run, what CI has just built
#   YOSEGI_BIN_DIR        take coordinator and party-client from this folder; build nothing
#   YOSEGI_OUT_DIR        where the model lands (default docker/out)
#   COMPOSE_PROJECT_NAME  compose project (default: compose's own, the folder name)
#   YOSEGI_BASE_IMAGE     base image to prefer (default debian:bookworm-slim)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${YOSEGI_PROFILE:-release}
out=${YOSEGI_OUT_DIR:-docker/out}
target=${CARGO_TARGET_DIR:-target}

log() { echo "compose-demo: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

# docker compose (the v2 plugin) if present, else the standalone docker-compose (v1 or v2).
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
  compose=(docker-compose)
else
  die "neither 'docker compose' nor 'docker-compose' works; install the Compose plugin or docker-compose"
fi
[ -z "${COMPOSE_PROJECT_NAME:-}" ] || compose+=(-p "$COMPOSE_PROJECT_NAME")
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine ('docker info' failed)"

# --- binaries -----------------------------------------------------------------------------------
t=$(now)
if [ -n "${YOSEGI_BIN_DIR:-}" ]; then
  bin=$YOSEGI_BIN_DIR
  log "using prebuilt binaries from $bin"
else
  case $profile in
  release)
    log "cargo build --release -p coordinator -p party-client"
    cargo build --release --locked -p coordinator -p party-client || die "cargo build --release failed"
    bin=$target/release
    ;;
  debug)
    # The same feature set as the test build, so nothing is rebuilt after `cargo test`.
    log "cargo test --workspace --locked --no-run"
    cargo test --workspace --locked --no-run || die "cargo test --workspace --locked --no-run failed"
    bin=$target/debug
    ;;
  *) die "YOSEGI_PROFILE must be release or debug, not '$profile'" ;;
  esac
fi
log "binaries ready in $(secs "$t") s"

# --- stage them into the build context ------------------------------------------------------------
t=$(now)
mkdir -p docker/bin
for b in coordinator party-client; do
  [ -x "$bin/$b" ] || die "no executable $bin/$b"
  install -m 0755 "$bin/$b" "docker/bin/$b.tmp"
  # Debug info is most of a debug binary's size and of no use in the image; a smaller build
  # context is sent faster, once per service. Symbols stay, for backtraces.
  if command -v strip >/dev/null 2>&1; then strip --strip-debug "docker/bin/$b.tmp"; fi
  mv -f "docker/bin/$b.tmp" "docker/bin/$b"
done
log "staged $(du -sh docker/bin | cut -f1) of binaries into docker/bin/ in $(secs "$t") s"

# --- base image -----------------------------------------------------------------------------------
t=$(now)
YOSEGI_BASE_IMAGE=$(scripts/docker-base-image.sh) || die "scripts/docker-base-image.sh failed"
export YOSEGI_BASE_IMAGE
log "base image $YOSEGI_BASE_IMAGE ready in $(secs "$t") s"

# --- the federation -------------------------------------------------------------------------------
t=$(now)
log "${compose[*]} up --build --abort-on-container-exit --exit-code-from operator"
rc=0
"${compose[@]}" up --build --abort-on-container-exit --exit-code-from operator || rc=$?
log "compose up finished with exit code $rc in $(secs "$t") s"

# --- the model out of the `model` volume (also after a failure: status.json helps) ----------------
project=${COMPOSE_PROJECT_NAME:-$(basename "$PWD")}
operator=$(docker ps -a -q --filter "label=com.docker.compose.project=$project" \
  --filter "label=com.docker.compose.service=operator" | head -n 1)
if [ -n "$operator" ]; then
  mkdir -p "$out"
  rm -f "$out/status.json" "$out"/*-merged.safetensors "$out"/*-merged.safetensors.manifest.json
  if docker cp "$operator:/out/." "$out/" 2>/dev/null; then
    log "operator output copied to $out/: $(cd "$out" && echo *)"
  else
    log "nothing to copy from the operator's /out"
  fi
else
  log "no operator container of project $project found; nothing copied"
fi
[ "$rc" -eq 0 ] || die "the federation failed: 'compose up' exited $rc (the operator's exit code; its log is above)"
