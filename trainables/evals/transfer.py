"""Linear transfer (PAPER.md section 3): a logistic-regression probe on frozen features.

The network is frozen; its penultimate features of the target's train and test splits are
extracted once; a multinomial, L2-regularised logistic regression (full-batch L-BFGS in torch,
trainables.evals.probe) is fit with its strength chosen on a validation split of the target
train set, then refit on the whole train split, and scored on the target test split. The same
probe on raw pixels and on a randomly initialised network of the same architecture are the
baselines that keep the number honest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainables.config import ProbeConfig
from trainables.data import ImageSet, Splits, adapt_images, iterate_batches, split_stratified
from trainables.evals.precision import full_precision
from trainables.evals.probe import LinearProbe, fit_linear_probe, standardise

if TYPE_CHECKING:  # annotations only: importing this module loads no model code
    from trainables.models import Classifier


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


@full_precision
def extract_features(
    model: Classifier,
    images: ImageSet | torch.Tensor,
    input_format: tuple[int, int] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Penultimate features in eval mode, without gradients, on the model's device.

    With input_format = (channels, size) of the model's source data, images that differ (a grey
    target for an RGB source, 8 px digits for a 28 px source) are adapted first.
    """
    model.eval()
    device = next(model.parameters()).device
    fmt = input_format
    n = len(images)
    batches: Iterable[torch.Tensor] = (
        (images[start : start + batch_size] for start in range(0, n, batch_size))
        if isinstance(images, torch.Tensor)
        else (x for x, _ in iterate_batches(images, batch_size, device=device))
    )
    chunks = []
    with torch.no_grad():
        for x in batches:
            if fmt is not None:
                x = adapt_images(x, *fmt)
            chunks.append(model.features(x.to(device)).float().cpu())
    return torch.cat(chunks)


def fit_probe(
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_test: np.ndarray,
    y_test: np.ndarray,
    cfg: ProbeConfig,
    seed: int = 0,
) -> ProbeResult:
    """Choose C on a stratified validation split, refit on all of train, score on test.

    Fits run from the strongest regularisation to the weakest, each warm-started from the last;
    features are standardised with the train split's statistics.
    """
    x_train = torch.from_numpy(np.ascontiguousarray(f_train, dtype=np.float32))
    x_test = torch.from_numpy(np.ascontiguousarray(f_test, dtype=np.float32))
    y_tr = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    y_te = torch.from_numpy(np.asarray(y_test, dtype=np.int64))
    k = int(max(y_tr.max(), y_te.max())) + 1
    stats = standardise(x_train)
    fit_idx, val_idx = (
        torch.from_numpy(i) for i in split_stratified(y_train, cfg.val_fraction, seed)
    )
    best: LinearProbe | None = None
    best_val = -1.0
    previous: LinearProbe | None = None
    for c in sorted(cfg.c_grid):
        previous = fit_linear_probe(
            x_train[fit_idx],
            y_tr[fit_idx],
            k,
            c,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            init=previous,
            stats=stats,
        )
        val_acc = previous.accuracy(x_train[val_idx], y_tr[val_idx])
        if val_acc > best_val:
            best, best_val = previous, val_acc
    assert best is not None
    final = fit_linear_probe(
        x_train, y_tr, k, best.c, max_iter=cfg.max_iter, tol=cfg.tol, init=best, stats=stats
    )
    return ProbeResult(
        test_acc=final.accuracy(x_test, y_te),
        train_acc=final.accuracy(x_train, y_tr),
        c=float(final.c),
        val_acc=best_val,
        n_train=len(y_train),
        n_test=len(y_test),
        feature_dim=f_train.shape[1],
    )


def run_transfer(
    model: Classifier,
    target: Splits,
    cfg: ProbeConfig,
    seed: int = 0,
    input_format: tuple[int, int] | None = None,
) -> ProbeResult:
    """Linear transfer of a frozen model's penultimate features to a target dataset."""
    f_train = extract_features(model, target.train, input_format).numpy()
    f_test = extract_features(model, target.test, input_format).numpy()
    return fit_probe(f_train, target.y_train.numpy(), f_test, target.y_test.numpy(), cfg, seed)


def run_raw_pixel_probe(target: Splits, cfg: ProbeConfig, seed: int = 0) -> ProbeResult:
    """The raw-pixel baseline: the same probe on flattened input pixels."""
    f_train = torch.cat([x.flatten(1) for x, _ in iterate_batches(target.train, 512)])
    f_test = torch.cat([x.flatten(1) for x, _ in iterate_batches(target.test, 512)])
    return fit_probe(
        f_train.numpy(), target.y_train.numpy(), f_test.numpy(), target.y_test.numpy(), cfg, seed
    )
