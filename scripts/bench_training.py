#!/usr/bin/env python3
"""One epoch of local training in PyTorch and scikit-learn, next to shared-model's burn bench.

Run through scripts/bench-training-python.sh (which creates the virtualenv, pins every library
to one thread and runs `cargo bench --workspace --bench training` first). This script times:

  * the WDBC spec (data/wdbc.toml: MLP 30→16→8→1, relu, dropout 0.1, Adam lr 0.005, batch 32,
    L2 1e-4 on weights only, BCE-with-logits) on all 569 rows of data/wdbc.csv, and
  * the same with hidden = [1024, 896, 64] (1 007 617 parameters),

in PyTorch (same layers, dropout, loss, Adam with L2 via param groups: weight_decay on weights,
0 on biases — the same gradient as shared-model's λ/2·Σ‖W‖² penalty) and in scikit-learn's
MLPClassifier (no dropout; alpha is L2 on all weights scaled by 1/batch). Each measurement is
the median of --reps epochs after --warmup unmeasured ones. It reads burn's medians from
target/criterion/train_one_epoch/*/new/estimates.json and prints a Markdown table with ratios.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import statistics
import time
import tomllib
import warnings

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

WDBC_HIDDEN = [16, 8]
BIG_HIDDEN = [1024, 896, 64]


def load(root: str):
    with open(os.path.join(root, "data/wdbc.toml"), "rb") as f:
        spec = tomllib.load(f)
    features = spec["task"]["features"]
    target = spec["task"]["target"]
    with open(os.path.join(root, "data/wdbc.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[c]) for c in features] for r in rows], dtype=np.float32)
    y = np.array([float(r[target]) for r in rows], dtype=np.float32)
    return spec, x, y


def zscore_stats(x: np.ndarray):
    # as shared-model's FeatureSums::normalization: population std, 1.0 where ~0
    mean = x.astype(np.float64).mean(axis=0)
    std = x.astype(np.float64).std(axis=0)
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def param_count(width: int, hidden: list[int]) -> int:
    dims = [width, *hidden, 1]
    return sum(a * b + b for a, b in zip(dims, dims[1:]))


def time_reps(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def torch_epoch_fn(spec, x_raw, y, hidden, mean, std, seed=1):
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    width = x_raw.shape[1]
    dropout = float(spec["model"]["dropout"])
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
    act = acts[spec["model"]["activation"]]
    dims = [width, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(dims[-1], 1))
    model = nn.Sequential(*layers)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    tr = spec["training"]
    lr, wd, batch = float(tr["learning_rate"]), float(tr["weight_decay"]), int(tr["batch_size"])
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    x_raw_t = torch.from_numpy(x_raw)
    y_t = torch.from_numpy(y).unsqueeze(1)
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    n = x_raw.shape[0]

    def epoch():
        # like shared_model::train::train: start from the given weights, fresh Adam state,
        # normalise the rows, one shuffled pass, the loss read out every batch
        with torch.no_grad():
            model.load_state_dict(start)
        weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
        biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
        # burn's AdamConfig defaults: betas (0.9, 0.999), epsilon 1e-5; L2 added to the gradient
        # (coupled, as the λ/2·‖W‖² loss term does), weights only
        opt = torch.optim.Adam(
            [{"params": weights, "weight_decay": wd}, {"params": biases, "weight_decay": 0.0}],
            lr=lr,
            betas=(0.9, 0.999),
            eps=1e-5,
        )
        model.train()
        x = (x_raw_t - mean_t) / std_t
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            xb, yb = x[idx], y_t[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        return total / n

    return epoch


def sklearn_epoch_fn(spec, x_raw, y, hidden, mean, std, seed=1):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    tr = spec["training"]
    rng = np.random.RandomState(seed)

    def epoch():
        clf = MLPClassifier(
            hidden_layer_sizes=tuple(hidden),
            activation=spec["model"]["activation"] if spec["model"]["activation"] != "sigmoid" else "logistic",
            solver="adam",
            learning_rate_init=float(tr["learning_rate"]),
            batch_size=int(tr["batch_size"]),
            alpha=float(tr["weight_decay"]),
            beta_1=0.9,
            beta_2=0.999,
            epsilon=1e-5,
            max_iter=1,
            shuffle=True,
            early_stopping=False,
            random_state=rng,
        )
        x = (x_raw - mean) / std
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y.astype(np.int64))
        return clf.loss_

    return epoch


def burn_medians(root: str) -> dict[tuple[str, str], float]:
    """(label, backend) → median seconds per epoch from criterion's last run."""
    out = {}
    base = os.path.join(root, "target/criterion/train_one_epoch")
    for path in glob.glob(os.path.join(base, "*", "new", "estimates.json")):
        bench_id = os.path.basename(os.path.dirname(os.path.dirname(path)))
        label, _, backend = bench_id.rpartition("_")
        with open(path) as f:
            est = json.load(f)
        out[(label, backend)] = est["median"]["point_estimate"] / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip-sklearn-big", action="store_true", help="skip sklearn on the 1M net")
    args = ap.parse_args()

    import sklearn
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    spec, x, y = load(args.root)
    mean, std = zscore_stats(x)
    n = x.shape[0]
    burn = burn_medians(args.root)

    rows = []
    for label, hidden in (("wdbc_1k_params", WDBC_HIDDEN), ("mlp_1m_params", BIG_HIDDEN)):
        params = param_count(x.shape[1], hidden)
        base = burn.get((label, "ndarray"))
        for (lab, backend), secs in sorted(burn.items()):
            if lab == label:
                rows.append((label, params, f"burn 0.22 {backend}", secs, base))
        for name, make in (("PyTorch", torch_epoch_fn), ("scikit-learn", sklearn_epoch_fn)):
            if name == "scikit-learn" and hidden == BIG_HIDDEN and args.skip_sklearn_big:
                continue
            fn = make(spec, x, y, hidden, mean, std)
            times = time_reps(fn, args.warmup, args.reps)
            rows.append((label, params, name, statistics.median(times), base))

    try:
        from threadpoolctl import threadpool_info

        pools = ", ".join(
            f"{i['internal_api']} {i['num_threads']} thread(s)" for i in threadpool_info()
        )
    except ImportError:
        pools = "threadpoolctl not installed"
    print(f"\nnumpy/scipy thread pools: {pools}")
    print(
        f"single-threaded; torch {torch.__version__} (threads {torch.get_num_threads()}), "
        f"scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}; {n} rows, batch {spec['training']['batch_size']}, "
        f"median of {args.reps} epochs after {args.warmup} warm-up\n"
    )
    print("| model | params | framework | ms/epoch (median) | samples/s | time ÷ burn-ndarray |")
    print("|---|---:|---|---:|---:|---:|")
    for label, params, fw, secs, base in rows:
        ratio = f"{secs / base:.2f}×" if base else "n/a (no criterion result)"
        print(
            f"| {label} | {params:,} | {fw} | {secs * 1e3:.2f} | {n / secs:,.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
