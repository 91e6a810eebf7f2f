#!/usr/bin/env bash
# Local training throughput next to PyTorch and scikit-learn (issue #7): one epoch of the WDBC
# spec and of a ~1M-parameter MLP, single-threaded everywhere, batch 32, all 569 rows.
#
#   scripts/bench-training-python.sh            # installs into target/bench-venv, runs everything
#   SKIP_RUST=1 scripts/bench-training-python.sh  # reuse target/criterion/*/new/estimates.json
#
# torch, scikit-learn and numpy are installed into a throw-away virtualenv under target/; they
# are never project dependencies. Prints a Markdown table with ratios against burn-ndarray.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/target/bench-venv"

# Single-threaded everywhere, like burn-ndarray in shared-model.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
  VECLIB_MAXIMUM_THREADS=1 NUMEXPR_NUM_THREADS=1

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c 'import torch, sklearn, numpy' 2>/dev/null; then
  "$py" -m pip install --quiet --upgrade pip || true
  # Prefer a CPU-only torch build if the configured index has one; PyPI's Linux wheels pull the
  # CUDA runtime packages (~4.5 GB in the venv, unused here: everything runs on the CPU).
  "$py" -m pip install --quiet 'torch==2.13.0+cpu' 2>/dev/null \
    || "$py" -m pip install --quiet 'torch==2.13.0' \
    || "$py" -m pip install --quiet torch
  "$py" -m pip install --quiet scikit-learn numpy
fi

if [[ -z "${SKIP_RUST:-}" ]]; then
  echo "== burn (cargo bench --workspace --bench training) ==" >&2
  cargo bench --workspace --bench training -- --noplot >&2
fi

echo "== PyTorch / scikit-learn ==" >&2
"$py" "$root/scripts/bench_training.py" --root "$root" "$@"
