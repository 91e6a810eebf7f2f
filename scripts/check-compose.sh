#!/usr/bin/env bash
# CI check of the docker-compose demo: on a fresh compose project (all volumes dropped before and
# after), run scripts/compose-demo.sh with the debug binaries the test build has just made, then
# check the outcome: exit code 0, three published rounds and a pulled model in the operator's log,
# a non-empty safetensors file, and an F1 of the last merged model on the plants' holdouts of at
# least $YOSEGI_MIN_F1. Fails, never skips, when Docker or Compose is missing or broken.
#
# Environment:
#   YOSEGI_PROFILE   debug (default: reuses `cargo test --workspace --locked --no-run`) or release
#   YOSEGI_MIN_F1    lowest acceptable F1 (default 0.85; the demo reaches about 0.96)
#   YOSEGI_ROUNDS    rounds to run (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

export COMPOSE_PROJECT_NAME=yosegi-ci
export YOSEGI_PROFILE=${YOSEGI_PROFILE:-debug}
export YOSEGI_ROUNDS=${YOSEGI_ROUNDS:-3}
min_f1=${YOSEGI_MIN_F1:-0.85}

fail() {
  echo "check-compose: FAIL: $*" >&2
  exit 1
}
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
start=$(now)

command -v docker >/dev/null 2>&1 || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "cannot reach the Docker engine ('docker info' failed)"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "$COMPOSE_PROJECT_NAME")
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
  compose=(docker-compose -p "$COMPOSE_PROJECT_NAME")
else
  fail "neither 'docker compose' nor 'docker-compose' works"
fi
echo "check-compose: using ${compose[0]} $("${compose[@]}" version --short 2>/dev/null || echo '?')"

work=$(mktemp -d "${TMPDIR:-/tmp}/yosegi-compose.XXXXXX")
export YOSEGI_OUT_DIR=$work/out
down() { "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1; }
cleanup() {
  down || echo "check-compose: warning: '${compose[*]} down -v' failed; remove the yosegi-ci containers and volumes by hand" >&2
  rm -rf "$work"
}
trap cleanup EXIT
# A fresh project: no keys, database or rounds left over from an earlier run.
down || fail "'${compose[*]} down -v' failed before the run"

t=$(now)
rc=0
scripts/compose-demo.sh || rc=$?
demo_secs=$(secs "$t")

# The operator's own log, without compose's prefixes (the container still exists until `down`).
operator=$(docker ps -a -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
  --filter "label=com.docker.compose.service=operator" | head -n 1)
[ -n "$operator" ] || fail "no operator container was created (compose-demo exited $rc)"
docker logs "$operator" >"$work/operator.log" 2>&1 || fail "docker logs of the operator failed"

echo
echo "== checks"
[ "$rc" -eq 0 ] || fail "scripts/compose-demo.sh exited $rc (the operator log is above)"
echo "ok   compose-demo exited 0"

published=$(grep -cE '^operator: round [0-9]+: published version [0-9]+' "$work/operator.log" || true)
[ "$published" -eq "$YOSEGI_ROUNDS" ] ||
  fail "the operator log shows $published published rounds, not $YOSEGI_ROUNDS"
grep -q '^operator: done: ' "$work/operator.log" || fail "the operator log has no 'operator: done:' line"
grep -q 'signature verified' "$work/operator.log" || fail "the operator log does not show a verified model pull"
echo "ok   operator log: $published rounds published, model pulled and verified"

# Every connection was TLS: the coordinator served over TLS, and nothing was served in plaintext.
coordinator=$(docker ps -a -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
  --filter "label=com.docker.compose.service=coordinator" | head -n 1)
[ -n "$coordinator" ] || fail "no coordinator container was created"
docker logs "$coordinator" >"$work/coordinator.log" 2>&1 || fail "docker logs of the coordinator failed"
grep -q 'coordinator serving over TLS' "$work/coordinator.log" || fail "the coordinator log does not show it serving over TLS"
if grep -qi 'PLAINTEXT' "$work/coordinator.log" "$work/operator.log"; then
  fail "a plaintext connection was made (see the coordinator and operator logs)"
fi
echo "ok   TLS: the coordinator served over TLS; no plaintext connection"

model=$YOSEGI_OUT_DIR/wdbc-merged.safetensors
[ -s "$model" ] || fail "no pulled model at $model (or it is empty)"
# safetensors: an 8-byte little-endian header length, then a JSON header.
hlen=$(head -c 8 "$model" | od -An -tu8 | tr -d ' ')
size=$(wc -c <"$model")
if ! { [ "${hlen:-0}" -gt 0 ] && [ $((hlen + 8)) -le "$size" ] && [ "$(tail -c +9 "$model" | head -c 1)" = "{" ]; }; then
  fail "$model is not a safetensors file (header length ${hlen:-none}, size $size)"
fi
[ -s "$model.manifest.json" ] || fail "no manifest next to the model ($model.manifest.json)"
echo "ok   model: $size bytes of safetensors, manifest beside it"

status=$YOSEGI_OUT_DIR/status.json
[ -s "$status" ] || fail "no rounds status at $status"
# The last published round's merged metrics: the plants' evaluations of the merged model on
# their holdouts (`metrics` of the round, never a party's own `local_metrics` or `evaluation`).
f1=$(python3 - "$status" <<'PY'
import json, sys
rounds = [r for r in json.load(open(sys.argv[1])) if r["phase"] == "published"]
last = max(rounds, key=lambda r: r["round"], default=None)
metrics = (last or {}).get("metrics") or {}
print(metrics.get("f1", "") if metrics.get("kind") == "binary" else "")
PY
) || fail "cannot read $status"
awk -v f="$f1" -v m="$min_f1" 'BEGIN { exit !(f ~ /^[0-9.eE+-]+$/ && f + 0 >= m + 0) }' ||
  fail "F1 of the last merged model is '${f1:-none}', below $min_f1"
echo "ok   F1 of the last merged model: $f1 (>= $min_f1)"

echo
echo "check-compose: PASS: compose demo ${demo_secs} s, total $(secs "$start") s (YOSEGI_PROFILE=$YOSEGI_PROFILE)"
