"""A linear probe: multinomial, L2-regularised logistic regression by full-batch L-BFGS in torch.

The objective is scikit-learn's, per sample: mean cross-entropy + ||W||^2 / (2 C n) (the bias is
not penalised), so a strength C means the same thing here as in LogisticRegression(C=C). Fits for
a grid of C start from the previous solution (strongest regularisation first), which is what
makes choosing C on a validation split cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from trainables.evals.precision import full_precision


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: logits = features @ weight.T + bias, on standardised features."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    c: float
    loss: float
    iterations: int

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.to(self.weight.dtype) - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.logits(features).argmax(1) == labels).float().mean())


def standardise(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std (std 1 for constant features), from the train features only."""
    mean = features.mean(0)
    std = features.std(0, unbiased=False)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def probe_objective(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: float
) -> torch.Tensor:
    """mean CE + ||W||^2 / (2 C n): scikit-learn's LogisticRegression objective divided by C n."""
    n = x.shape[0]
    return F.cross_entropy(x @ weight.T + bias, y) + weight.pow(2).sum() / (2 * c * n)


@full_precision
def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    c: float,
    *,
    max_iter: int = 500,
    tol: float = 1e-6,
    init: LinearProbe | None = None,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> LinearProbe:
    """Minimise probe_objective with L-BFGS (strong Wolfe line search) to gradient norm tol.

    Features are standardised with `stats` (mean, std) when given, else with their own; `init`
    warm-starts the weights (e.g. from the fit at a neighbouring C).
    """
    if c <= 0:
        raise ValueError(f"the regularisation strength C must be positive, got {c}")
    feats = features.to(dtype)
    mean, std = stats if stats is not None else standardise(feats)
    x = (feats - mean) / std
    y = labels.long()
    d = x.shape[1]
    if init is not None:
        weight = init.weight.detach().clone().requires_grad_(True)
        bias = init.bias.detach().clone().requires_grad_(True)
    else:
        weight = torch.zeros(num_classes, d, dtype=dtype, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = probe_objective(weight, bias, x, y, c)
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    with torch.no_grad():
        loss = float(probe_objective(weight, bias, x, y, c))
    return LinearProbe(
        weight=weight.detach(),
        bias=bias.detach(),
        mean=mean,
        std=std,
        c=c,
        loss=loss,
        iterations=int(state.get("n_iter", 0)),
    )
