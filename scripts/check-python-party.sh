#!/usr/bin/env bash
# Checks that the docs suffice to write a party in another language: scripts/python_party.py, a
# minimal party written from docs/PROTOCOL.md and proto/ only (Python: grpcio, cryptography,
# safetensors, numpy), takes part in a real FedAvg round beside two Rust daemons against a real
# coordinator over TLS — statistics, training, a signed upload, evaluation of the merged model —
# and the operator CLI then shows its update merged and its evaluation counted.
# Needs python3 (>= 3.11) and access to PyPI. YOSEGI_SKIP_BUILD=1 reuses the built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "check-python-party: $*"; }
fail() {
  echo "check-python-party: FAIL: $*" >&2
  for f in "$work"/*.log; do
    [ -f "$f" ] && { echo "--- tail of $(basename "$f")" >&2; tail -n 25 "$f" >&2; }
  done
  exit 1
}
start=$(date +%s)

work=$(mktemp -d "${TMPDIR:-/tmp}/yosegi-python-party.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if [ "${YOSEGI_SKIP_BUILD:-0}" != 1 ]; then
  say "building (cargo test --workspace --locked --no-run)"
  # Build the way the test command does (same feature set, so nothing is rebuilt after the tests).
  cargo test --workspace --locked --no-run -q 2>/dev/null
fi
bin=${CARGO_TARGET_DIR:-target}/debug
coordinator=$bin/coordinator
party_client=$bin/party-client
[ -x "$coordinator" ] && [ -x "$party_client" ] || fail "no $coordinator or $party_client"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "python3 >= 3.11 needed (tomllib)"
say "venv with grpcio grpcio-tools cryptography safetensors numpy; stubs from proto/"
python3 -m venv "$work/venv"
py=$work/venv/bin/python
"$work/venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-tools cryptography \
  safetensors numpy
mkdir "$work/stubs"
"$py" -m grpc_tools.protoc -I proto --python_out="$work/stubs" proto/yosegi/v1/*.proto

say "coordinator init, serve (TLS) on a free loopback port"
data=$work/coordinator-data
"$coordinator" init --data-dir "$data" >"$work/init.log" 2>&1 || fail "coordinator init"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$coordinator" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$work/coordinator.log" 2>&1 &
pids+=($!)
export YOSEGI_SERVER=https://127.0.0.1:$port YOSEGI_CA=$data/tls/ca.pem \
  YOSEGI_OPERATOR_KEY=$data/operator.key.pem YOSEGI_COORDINATOR_KEY=$data/coordinator.pub.pem
for _ in $(seq 100); do
  "$coordinator" party list >/dev/null 2>&1 && break
  sleep 0.2
done
"$coordinator" party list >/dev/null 2>&1 || fail "the coordinator does not answer on port $port"

say "split data/wdbc.csv into 3 parties; keys for plant-a, plant-b, plant-py; enroll; task wdbc"
"$coordinator" data split --data data/wdbc.csv --spec data/wdbc.toml --parties 3 \
  --out "$work/split" >/dev/null 2>&1 || fail "coordinator data split"
for p in plant-a plant-b plant-py; do
  "$party_client" keygen --out "$work/$p" >/dev/null 2>&1 || fail "keygen $p"
  "$coordinator" party enroll --name "$p" --public-key "$work/$p/party.pub.pem" \
    >>"$work/operator.log" 2>&1 || fail "enroll $p"
done
"$coordinator" task create --spec data/wdbc.toml --name wdbc >>"$work/operator.log" 2>&1 ||
  fail "task create"

say "two Rust daemons (plant-a, plant-b) and the Python party (plant-py)"
i=1
for p in plant-a plant-b; do
  "$party_client" run --server "$YOSEGI_SERVER" --name "$p" --key "$work/$p/party.key.pem" \
    --coordinator-key "$YOSEGI_COORDINATOR_KEY" --ca "$YOSEGI_CA" --data "$work/split/party-$i.csv" \
    --state-dir "$work/$p/state" >"$work/$p.log" 2>&1 &
  pids+=($!)
  i=$((i + 1))
done
PYTHONPATH=$work/stubs "$py" scripts/python_party.py --server "127.0.0.1:$port" --ca "$YOSEGI_CA" \
  --name plant-py --key "$work/plant-py/party.key.pem" --coordinator-key "$YOSEGI_COORDINATOR_KEY" \
  --data "$work/split/party-3.csv" --spec data/wdbc.toml --task wdbc --timeout 150 \
  >"$work/plant-py.log" 2>&1 &
py_pid=$!
pids+=($py_pid)

say "round start: fedavg, 3 parties, 1 round"
"$coordinator" round start --task wdbc --strategy fedavg --min-parties 3 --rounds 1 --deadline 2m \
  >>"$work/operator.log" 2>&1 || fail "round start"

say "waiting for the Python party to evaluate the merged model"
rc=0
wait "$py_pid" || rc=$?
grep '^python-party:' "$work/plant-py.log" | sed 's/^/  /'
[ "$rc" -eq 0 ] || fail "the Python party exited $rc"

say "round status: published, 3 accepted (plant-py among them), evaluated by 3"
ok=
for _ in $(seq 150); do
  "$coordinator" round status --task wdbc --json >"$work/status.json" 2>>"$work/operator.log" ||
    fail "round status"
  if verdict=$(python3 - "$work/status.json" <<'PY'
import json, sys
# `round status --json` prints a JSON array of rounds; the metrics are JSON objects in it.
r = [r for r in json.load(open(sys.argv[1])) if r["round"] == 1][0]
accepted = sorted(p["party"] for p in r["parties"] if p["state"] == "accepted")
py = [p for p in r["parties"] if p["party"] == "plant-py"][0]
print(f"round 1 {r['phase']}, version {r['version']}, accepted {','.join(accepted)}, "
      f"evaluated by {r['evaluated_by']}, plant-py's evaluation {py['evaluation']}")
done = (r["phase"] == "published" and accepted == ["plant-a", "plant-b", "plant-py"]
        and r["evaluated_by"] == 3 and py["evaluation"] is not None)
sys.exit(0 if done else 1)
PY
  ); then
    ok=1
    break
  fi
  sleep 0.2
done
say "  $verdict"
[ -n "$ok" ] || fail "round 1 did not reach: published, 3 accepted with plant-py, evaluated by 3"

say "model pull: verified, and its manifest names plant-py as a contributor"
"$coordinator" model pull --task wdbc --out "$work/merged.safetensors" >>"$work/operator.log" 2>&1 ||
  fail "model pull"
python3 - "$work/merged.safetensors.manifest.json" <<'PY' || fail "plant-py is not a contributor of the pulled model"
import json, sys
signed = json.load(open(sys.argv[1]))
manifest = json.loads(signed["manifest"])
parties = {c["party"]: c["sample_count"] for c in manifest["contributors"]}
print(f"check-python-party:   v{manifest['version']} {manifest['strategy']}, contributors {parties}")
sys.exit(0 if "plant-py" in parties and len(parties) == 3 else 1)
PY

say "the merged model on the held-back rows: Python's forward pass agrees with party-client evaluate"
"$party_client" evaluate --spec data/wdbc.toml --model "$work/merged.safetensors" \
  --manifest "$work/merged.safetensors.manifest.json" --coordinator-key "$YOSEGI_COORDINATOR_KEY" \
  --data "$work/split/holdout.csv" --json >"$work/rust-eval.json" 2>>"$work/operator.log" ||
  fail "party-client evaluate of the pulled model"
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$work/stubs:scripts "$py" - "$work" <<'PY' || fail "Python and Rust disagree on the merged model"
import csv, json, sys, tomllib
import numpy as np
from python_party import decode_blob, metric_stats, spec_id
work = sys.argv[1]
spec = tomllib.load(open("data/wdbc.toml", "rb"))
rows = list(csv.DictReader(open(f"{work}/split/holdout.csv")))
x = np.array([[float(r[c]) for c in spec["task"]["features"]] for r in rows])
y = np.array([float(r[spec["task"]["target"]]) for r in rows])
t, layers = decode_blob(open(f"{work}/merged.safetensors", "rb").read(), spec, spec_id(spec))
s = json.loads(metric_stats(t, layers, x, y, "relu"))
ours = {"accuracy": (s["tp"] + s["tn"]) / len(y), "log_loss": s["log_loss_sum"] / len(y)}
rust = json.load(open(f"{work}/rust-eval.json"))
print(f"check-python-party:   {len(y)} rows: Python {ours}, party-client "
      f"{ {k: rust[k] for k in ours} }")
sys.exit(0 if abs(ours["accuracy"] - rust["accuracy"]) < 1e-9
         and abs(ours["log_loss"] - rust["log_loss"]) < 1e-4 else 1)
PY

say "python party: vectors ok, statistics, fedavg round (merged with 2 Rust daemons), evaluation ok ($(($(date +%s) - start)) s)"
