#!/usr/bin/env bash
# Writes scikit-learn's bundled 8×8 digits (1797 rows, 64 pixel columns p0…p63, 10 classes in
# `digit`) as a CSV, for the skewed multiclass experiments in docs/RESULTS.md. scikit-learn goes
# into a throw-away virtualenv under target/ (the same one sklearn-metrics-fixture.sh uses),
# never a project dependency. Usage: scripts/digits-csv.sh OUT.csv
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: scripts/digits-csv.sh OUT.csv}"
venv="$root/target/sklearn-venv"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import sklearn, numpy' 2>/dev/null \
  || "$venv/bin/python" -m pip install --quiet 'scikit-learn==1.9.1' 'numpy==2.4.6'
"$venv/bin/python" - "$out" <<'PY'
import csv, sys
from sklearn.datasets import load_digits
d = load_digits()
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([f"p{i}" for i in range(64)] + ["digit"])
    for x, y in zip(d.data, d.target):
        w.writerow([int(v) for v in x] + [int(y)])
PY
echo "wrote $out"
