#!/usr/bin/env bash
# Round overhead for a tiny model vs the number of parties (issue #7). For each N: a fresh
# release coordinator (own data dir, TLS, own port), then `coordinator swarm` with N simulated
# parties, a 17-parameter (linear) regression spec and 3 FedAvg rounds, reporting per round the
# time from round open to every upload acknowledged and from the last ack to the published
# model, and the coordinator's peak memory (VmHWM of its pid). Prints each swarm table and a
# summary table in Markdown; the JSON reports stay in $OUT.
#
# Environment:
#   YOSEGI_PARTIES   space-separated party counts (default "10 100 1000")
#   YOSEGI_ROUNDS    rounds per run (default 3)
#   YOSEGI_PARAMS    parameter count of the spec (default 17)
#   YOSEGI_PORT      first port; run i uses PORT+i (default 50161)
#   YOSEGI_BUILD     1 (default) builds `cargo build --release --workspace` first; 0 reuses target/release
#   OUT              where data dirs, logs and JSON go (default /tmp/bench-round-overhead)
set -euo pipefail
cd "$(dirname "$0")/.."

parties=${YOSEGI_PARTIES:-"10 100 1000"}
rounds=${YOSEGI_ROUNDS:-3}
params=${YOSEGI_PARAMS:-17}
port=${YOSEGI_PORT:-50161}
out=${OUT:-/tmp/bench-round-overhead}
bin=target/release/coordinator

server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT INT TERM

if [[ "${YOSEGI_BUILD:-1}" == 1 ]]; then
  cargo build --release --workspace
fi
[[ -x "$bin" ]] || { echo "bench-round-overhead: $bin is missing; build with cargo build --release --workspace" >&2; exit 1; }

mkdir -p "$out"
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); $(date -u '+%Y-%m-%d %H:%M UTC')"

for n in $parties; do
  dir="$out/ro-$n"
  rm -rf "$dir"
  "$bin" init --data-dir "$dir" >"$out/init-$n.log"
  "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" >"$out/serve-$n.log" 2>&1 &
  server_pid=$!
  # Wait until the port accepts connections (at most 30 s).
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$server_pid" || { echo "coordinator for N=$n exited; see $out/serve-$n.log" >&2; exit 1; }
    sleep 0.1
  done
  echo
  echo "== N=$n parties (load average: $(cut -d' ' -f1-3 /proc/loadavg)) =="
  "$bin" swarm --parties "$n" --param-count "$params" --rounds "$rounds" \
    --server "https://localhost:$port" \
    --operator-key "$dir/operator.key.pem" --ca "$dir/tls/ca.pem" \
    --coordinator-pid "$server_pid" --json "$out/swarm-$n.json" 2>"$out/swarm-$n.log"
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  port=$((port + 1))
done

echo
echo "| parties | enroll s | task+stats s | per round: open → all acked s | per round: last ack → published s | coordinator peak MiB |"
echo "|---|---|---|---|---|---|"
for n in $parties; do
  python3 - "$out/swarm-$n.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
up = " / ".join(f"{x['uploads_secs']:.2f}" for x in r["rounds"])
mp = " / ".join(f"{x['merge_publish_secs']:.2f}" for x in r["rounds"])
peak = r.get("coordinator_peak_kib")
peak = f"{peak / 1024:.1f}" if peak else "-"
print(f"| {r['parties']} | {r['enroll_secs']:.2f} | {r['task_statistics_secs']:.2f} | {up} | {mp} | {peak} |")
EOF
done
