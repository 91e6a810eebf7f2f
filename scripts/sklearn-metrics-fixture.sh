#!/usr/bin/env bash
# Regenerates shared-model/src/eval/fixtures/sklearn_metrics.json (what scikit-learn's metrics
# give on fixed prediction vectors; shared-model's must agree): scikit-learn and numpy go into a
# throw-away virtualenv under target/, never a project dependency. Run only when the cases
# change; the JSON is committed and the Rust test reads it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/target/sklearn-venv"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import sklearn, numpy' 2>/dev/null \
  || "$venv/bin/python" -m pip install --quiet 'scikit-learn==1.9.1' 'numpy==2.4.6'
"$venv/bin/python" "$root/scripts/sklearn_metrics_fixture.py" \
  "$root/shared-model/src/eval/fixtures/sklearn_metrics.json"
