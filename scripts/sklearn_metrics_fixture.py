"""Writes shared-model/src/eval/fixtures/sklearn_metrics.json: fixed prediction vectors and what
scikit-learn's metrics give for them, which shared-model's metrics must reproduce
(`eval/sklearn_tests.rs`). Run once through scripts/sklearn-metrics-fixture.sh; the JSON is
committed, scikit-learn is never a project dependency.

Conventions matched on purpose (Yosegi's, stated so sklearn gets the same inputs):
- binary: predicted class = P(1) >= 0.5; ROC-AUC from the probabilities;
- multiclass: predicted class = first argmax of the probability row; log-loss over the
  declared classes (labels=range(classes));
- macro averages over the classes present in the labels or the predictions (sklearn's default
  labels), a 0/0 precision or recall counting as 0 (zero_division=0);
- regression R² = 0 when the targets are constant and the predictions are not (force_finite).
Probabilities stay within [1e-3, 1 - 1e-3]: the two clip log-loss at different epsilons.
"""
import json
import sys

import numpy as np
import sklearn
from sklearn import metrics as M

rng = np.random.default_rng(20261203)
f32 = lambda a: np.asarray(a, dtype=np.float32)


def binary(name, p, y):
    p, y = f32(np.clip(p, 1e-3, 1 - 1e-3)), f32(y)
    yhat = (p >= 0.5).astype(int)
    yi = y.astype(int)
    pd = p.astype(np.float64)
    return {
        "name": name, "kind": "binary", "classes": 2,
        "preds": p.tolist(), "targets": y.tolist(),
        "metrics": {
            "accuracy": M.accuracy_score(yi, yhat),
            "precision": M.precision_score(yi, yhat, zero_division=0),
            "recall": M.recall_score(yi, yhat, zero_division=0),
            "f1": M.f1_score(yi, yhat, zero_division=0),
            "roc_auc": M.roc_auc_score(yi, pd),
            "log_loss": M.log_loss(yi, pd, labels=[0, 1]),
        },
    }


def multiclass(name, probs, y, k):
    probs = np.clip(probs, 1e-3, None)
    probs = f32(probs / probs.sum(axis=1, keepdims=True))
    y = np.asarray(y, dtype=int)
    yhat = probs.argmax(axis=1)
    return {
        "name": name, "kind": "multiclass", "classes": k,
        "preds": probs.reshape(-1).tolist(), "targets": f32(y).tolist(),
        "metrics": {
            "accuracy": M.accuracy_score(y, yhat),
            "macro_precision": M.precision_score(y, yhat, average="macro", zero_division=0),
            "macro_recall": M.recall_score(y, yhat, average="macro", zero_division=0),
            "macro_f1": M.f1_score(y, yhat, average="macro", zero_division=0),
            "log_loss": M.log_loss(y, probs.astype(np.float64), labels=list(range(k))),
        },
    }


def regression(name, p, y):
    p, y = f32(p), f32(y)
    pd, yd = p.astype(np.float64), y.astype(np.float64)
    return {
        "name": name, "kind": "regression", "classes": 0,
        "preds": p.tolist(), "targets": y.tolist(),
        "metrics": {
            "mse": M.mean_squared_error(yd, pd),
            "mae": M.mean_absolute_error(yd, pd),
            "r2": M.r2_score(yd, pd),
        },
    }


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


cases = []
y = rng.integers(0, 2, 200)
cases.append(binary("binary: 200 rows, a useful score",
                    1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(0, 1.2, 200)))), y))
y = rng.integers(0, 2, 120)
cases.append(binary("binary: scores in steps of 0.1 (ties, some exactly 0.5)",
                    np.round(np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, 120), 0.1, 0.9), 1), y))
y = rng.integers(0, 2, 60)
cases.append(binary("binary: nothing predicted positive (precision 0/0)",
                    rng.uniform(0.01, 0.45, 60), y))

# The example: 5 classes declared, the holdout has 0-2 only, predicted perfectly.
y = rng.integers(0, 3, 90)
z = np.full((90, 5), -3.0)
z[np.arange(90), y] = 3.0
cases.append(multiclass("multiclass: 5 classes declared, 3 present, all right", softmax(z), y, 5))
y = rng.choice(4, 150, p=[0.6, 0.25, 0.1, 0.05])
z = rng.normal(0, 1, (150, 4))
z[np.arange(150), y] += 1.5
z[:, 3] -= 4.0  # class 3 is never predicted
cases.append(multiclass("multiclass: label skew, one present class never predicted", softmax(z), y, 4))
y = rng.integers(0, 2, 80)
z = rng.normal(0, 1, (80, 6))
z[np.arange(80), y] += 1.0
z[:10, 4] += 6.0  # class 4, absent from the labels, predicted for ten rows
cases.append(multiclass("multiclass: a class absent from the labels is predicted", softmax(z), y, 6))

y = rng.uniform(25, 350, 300)
cases.append(regression("regression: targets 25-350", y + rng.normal(0, 40, 300), y))
cases.append(regression("regression: worse than the mean", rng.uniform(25, 350, 300), y))
cases.append(regression("regression: constant targets", rng.normal(7, 1, 40), np.full(40, 7.0)))
cases.append(regression("regression: constant targets, exact", np.full(40, 7.0), np.full(40, 7.0)))

out = {
    "generator": "scripts/sklearn_metrics_fixture.py",
    "sklearn": sklearn.__version__,
    "numpy": np.__version__,
    "cases": cases,
}
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(f"{len(cases)} cases, scikit-learn {sklearn.__version__}, into {sys.argv[1]}")
