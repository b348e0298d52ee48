"""Linear transfer (PAPER.md section 3): a logistic-regression probe on frozen features.

The network is frozen; its penultimate features of the target's train and test splits are
extracted once; a multinomial, L2-regularised logistic regression is fit with its strength chosen
on a validation split of the target train set, then refit on the whole train split, and scored on
the target test split. The same probe on raw pixels and on a randomly initialised network of the
same architecture are the baselines that keep the number honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from trainables.config import ProbeConfig
from trainables.data import Splits, split_stratified


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy of a fitted probe and the regularisation it chose."""

    test_acc: float
    train_acc: float
    c: float
    val_acc: float
    n_train: int
    n_test: int
    feature_dim: int


def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features of x in eval mode, without gradients, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            chunks.append(model.features(x[start : start + batch_size].to(device)).cpu())
    return torch.cat(chunks)


def _fit(
    features: np.ndarray, labels: np.ndarray, c: float, cfg: ProbeConfig
) -> LogisticRegression:
    clf = LogisticRegression(C=c, max_iter=cfg.max_iter)
    return clf.fit(features, labels)


def fit_probe(
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_test: np.ndarray,
    y_test: np.ndarray,
    cfg: ProbeConfig,
    seed: int = 0,
) -> ProbeResult:
    """Choose C on a stratified validation split, refit on all of train, score on test."""
    scaler = StandardScaler().fit(f_train)
    f_train_s, f_test_s = scaler.transform(f_train), scaler.transform(f_test)
    fit_idx, val_idx = split_stratified(y_train, cfg.val_fraction, seed)
    best_c, best_val = cfg.c_grid[0], -1.0
    for c in cfg.c_grid:
        clf = _fit(f_train_s[fit_idx], y_train[fit_idx], c, cfg)
        val_acc = float(clf.score(f_train_s[val_idx], y_train[val_idx]))
        if val_acc > best_val:
            best_c, best_val = c, val_acc
    clf = _fit(f_train_s, y_train, best_c, cfg)
    return ProbeResult(
        test_acc=float(clf.score(f_test_s, y_test)),
        train_acc=float(clf.score(f_train_s, y_train)),
        c=float(best_c),
        val_acc=best_val,
        n_train=len(y_train),
        n_test=len(y_test),
        feature_dim=f_train.shape[1],
    )


def run_transfer(model: nn.Module, target: Splits, cfg: ProbeConfig, seed: int = 0) -> ProbeResult:
    """Linear transfer of a frozen model's penultimate features to a target dataset."""
    f_train = extract_features(model, target.x_train).numpy()
    f_test = extract_features(model, target.x_test).numpy()
    return fit_probe(f_train, target.y_train.numpy(), f_test, target.y_test.numpy(), cfg, seed)


def run_raw_pixel_probe(target: Splits, cfg: ProbeConfig, seed: int = 0) -> ProbeResult:
    """The raw-pixel baseline: the same probe on flattened input pixels."""
    return fit_probe(
        target.x_train.flatten(1).numpy(),
        target.y_train.numpy(),
        target.x_test.flatten(1).numpy(),
        target.y_test.numpy(),
        cfg,
        seed,
    )
