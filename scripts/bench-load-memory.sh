#!/usr/bin/env bash
# Peak memory of loading and training one epoch at a plant (`party-client train`), beside the
# CSV's size: a 222 MB numeric export (1.5 M rows × 20 columns, written by Python's stdlib) and a
# 66 MB plant export with text columns and blanks (`coordinator data synth --kind plant`, 1.2 M
# rows, 27 encoded inputs). Needs GNU time (/usr/bin/time). Usage: scripts/bench-load-memory.sh
# [release|debug] (the profile of target/ to use; default release, built if missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${1:-release}"
bin="$root/target/$profile"
if [[ ! -x "$bin/party-client" || ! -x "$bin/coordinator" ]]; then
  flag=(); [[ "$profile" == release ]] && flag=(--release)
  cargo build "${flag[@]}" --locked -p coordinator -p party-client --manifest-path "$root/Cargo.toml"
fi
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
python3 - "$work/num.csv" <<'PY'
import random, sys
random.seed(1)
with open(sys.argv[1], "w") as f:
    f.write(",".join(f"x{i}" for i in range(20)) + ",y\n")
    for _ in range(1_500_000):
        xs = [random.random() * 10 for _ in range(20)]
        f.write(",".join(f"{x:.4f}" for x in xs) + f",{sum(xs[:5]) + random.gauss(0, 1):.4f}\n")
PY
"$bin/coordinator" data synth --kind plant --rows 400000 --out "$work/plant.csv" >/dev/null 2>&1
for name in num plant; do
  target=y; [[ $name == plant ]] && target=yield_kg
  "$bin/coordinator" spec init --data "$work/$name.csv" --target $target --out "$work/$name.toml" >/dev/null 2>&1
  size=$(stat -c %s "$work/$name.csv")
  /usr/bin/time -v "$bin/party-client" train --spec "$work/$name.toml" --data "$work/$name.csv" --epochs 1 \
    >/dev/null 2>"$work/$name.time"
  peak=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/$name.time")
  wall=$(awk -F': ' '/Elapsed \(wall/ {print $2}' "$work/$name.time")
  awk -v n=$name -v s=$size -v p=$peak -v w=$wall \
    'BEGIN { printf "%-6s csv %6.1f MB  peak RSS %6.1f MB  (%.2f x the file)  wall %s\n", n, s/1e6, p*1024/1e6, p*1024/s, w }'
done
