"""Reference values for `ftri align` (tests/fixtures/align/): scikit-learn's RidgeCV through
cross_val_predict on ftri's interleaved folds, SciPy's Spearman between correlation-distance RDMs,
Kornblith et al.'s debiased linear CKA, and the split-half noise ceiling.

Run from the repository root: python scripts/make_align_fixture.py (numpy, scipy, scikit-learn).
Deterministic: the same versions give the same files.
"""

import json
import os

import numpy as np
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_val_predict

OUT = "tests/fixtures/align"
N, FOLDS = 40, 5
ALPHAS = [10.0**k for k in range(-2, 9)]  # ftri's default grid


def center_gram(gram):
    # Kornblith et al. (2019) colab, unbiased=True
    gram = gram.copy()
    n = gram.shape[0]
    np.fill_diagonal(gram, 0)
    means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
    means -= np.sum(means) / (2 * (n - 1))
    gram -= means[:, None]
    gram -= means[None, :]
    np.fill_diagonal(gram, 0)
    return gram


def cka(x, y):
    gx, gy = center_gram(x @ x.T), center_gram(y @ y.T)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def main():
    rng = np.random.default_rng(0)
    # two "layers": few features (primal path) and more features than training rows (dual path)
    x0 = rng.normal(size=(N, 6)).astype(np.float32)
    x1 = rng.normal(size=(N, 50)).astype(np.float32)
    w = rng.normal(size=(6, 7))
    signal = x0.astype(np.float64) @ w
    repeats = (signal[None] + rng.normal(scale=2.0, size=(4, N, 7))).astype(np.float32)
    y = repeats.mean(0).astype(np.float32)
    splits = [
        (np.array([i for i in range(N) if i % FOLDS != f]), np.arange(f, N, FOLDS))
        for f in range(FOLDS)
    ]
    yd = y.astype(np.float64)
    layers = []
    for x in (x0, x1):
        xd = x.astype(np.float64)
        pred = cross_val_predict(RidgeCV(alphas=ALPHAS), xd, yd, cv=splits)
        alphas = [float(RidgeCV(alphas=ALPHAS).fit(xd[tr], yd[tr]).alpha_) for tr, _ in splits]
        r = [float(pearsonr(yd[:, j], pred[:, j])[0]) for j in range(yd.shape[1])]
        r2 = [float(v) for v in r2_score(yd, pred, multioutput="raw_values")]
        rho = float(spearmanr(pdist(xd, "correlation"), pdist(yd, "correlation"))[0])
        layers.append({"r": r, "r2": r2, "alphas": alphas, "rsa_rho": rho, "cka": cka(xd, yd)})
    ceiling = []
    for j in range(7):
        even = repeats[0::2, :, j].astype(np.float64).mean(0)
        odd = repeats[1::2, :, j].astype(np.float64).mean(0)
        rh = pearsonr(even, odd)[0]
        ceiling.append(float(np.sqrt(max(2 * rh / (1 + rh), 0.0))))
    os.makedirs(OUT, exist_ok=True)
    np.save(f"{OUT}/x0.npy", x0)
    np.save(f"{OUT}/x1.npy", x1)
    np.save(f"{OUT}/brain.npy", y)
    np.save(f"{OUT}/repeats.npy", repeats)
    with open(f"{OUT}/reference.json", "w") as f:
        json.dump({"folds": FOLDS, "layers": layers, "noise_ceiling": ceiling}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
