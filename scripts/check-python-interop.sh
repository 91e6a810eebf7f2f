#!/usr/bin/env bash
# Checks that a Yosegi weight blob is a plain safetensors file other tools read: trains the WDBC
# spec locally with the party client, then loads the blob with the Python `safetensors` package
# (the same Rust parser behind `safetensors.torch.load_file`) in a throwaway virtualenv, and
# checks tensor names, shapes, dtypes and metadata. Needs python3 and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Build the way the test command does (same feature set, so nothing is rebuilt after the tests).
cargo test --workspace --locked --no-run -q 2>/dev/null
"${CARGO_TARGET_DIR:-target}/debug/party-client" train --spec data/wdbc.toml --data data/wdbc.csv \
  --epochs 2 --out "$work/local.safetensors" >/dev/null
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check safetensors numpy
"$work/venv/bin/python" - "$work/local.safetensors" <<'PY'
import sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

path = sys.argv[1]
t = load_file(path)
want = {
    "norm.mean": (30,), "norm.std": (30,),
    "layers.0.weight": (16, 30), "layers.0.bias": (16,),
    "layers.1.weight": (8, 16), "layers.1.bias": (8,),
    "layers.2.weight": (1, 8), "layers.2.bias": (1,),
}
got = {k: v.shape for k, v in t.items()}
assert got == want, got
assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in t.values())
with safe_open(path, "np") as f:
    meta = f.metadata()
assert meta["format"] == "yosegi.weights.v1" and meta["role"] == "update", meta
assert len(meta["spec_id"]) == 64, meta
print("python safetensors reads the blob:", ", ".join(f"{k}{list(v)}" for k, v in got.items()))
PY
