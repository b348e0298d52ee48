"""Fisher information of a trained network (PAPER.md section 4).

Of the representation about the input: with z = f(x) + n, n ~ N(0, sigma^2 I), F(x) =
J(x)^T J(x) / sigma^2; its trace ||J||_F^2 / sigma^2 is computed exactly (full Jacobian) or by
Hutchinson's estimator E ||J v||^2 over Gaussian probes v, with Jacobian-vector products.
Of the weights about the task: trace of E_x E_y [g g^T] = E ||g||^2, g the per-sample gradient of
log p_w(y | x), y sampled from the model ("true") or the dataset label ("empirical"); total and
per layer, from per-sample gradients with torch.func, in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap
from torch.nn import functional as F

from trainables.config import FISHER_METHODS, WEIGHT_FISHER_TYPES
from trainables.evals.precision import full_precision

if TYPE_CHECKING:  # annotations only: importing this module loads no model code
    from trainables.models import Classifier


@dataclass(frozen=True)
class TraceEstimate:
    """Mean over samples of a per-sample trace, with its standard error over samples."""

    mean: float
    stderr: float
    n: int


def _summarise(per_sample: torch.Tensor) -> TraceEstimate:
    n = per_sample.numel()
    std = float(per_sample.std(unbiased=True)) if n > 1 else 0.0
    return TraceEstimate(float(per_sample.mean()), std / max(n, 1) ** 0.5, n)


def input_fisher_trace_exact(
    feature_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: float = 1.0
) -> torch.Tensor:
    """Per-sample ||J(x)||_F^2 / sigma^2 from the full Jacobian (small inputs only)."""

    def single(xi: torch.Tensor) -> torch.Tensor:
        return feature_fn(xi.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(single))(x)
    return jac.flatten(1).pow(2).sum(1) / sigma**2


def input_fisher_trace_hutchinson(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    probes: int,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample Hutchinson estimate mean_v ||J v||^2 / sigma^2 with v ~ N(0, I).

    The features of one sample must not depend on the others (eval mode), so a batched JVP
    gives every sample's own J_i v_i at once.
    """
    total = torch.zeros(len(x), device=x.device)
    for _ in range(probes):
        v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # [1], not unpacking: torch.func annotates jvp's result as a 2- or 3-tuple (has_aux).
        jv: torch.Tensor = jvp(feature_fn, (x,), (v,))[1]
        total += jv.flatten(1).pow(2).sum(1)
    return total / probes / sigma**2


def input_fisher_top_eigenvalue(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    iters: int = 20,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample largest eigenvalue of J^T J / sigma^2 by power iteration.

    Each iteration is one Jacobian-vector product (u = J v) and one vector-Jacobian product
    (w = J^T u); samples are independent in eval mode, so a batch iterates all at once.
    """
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    v = v / v.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    # [1], not unpacking: torch.func annotates vjp's result as a 2- or 3-tuple (has_aux).
    pullback: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] = vjp(feature_fn, x)[1]
    eig = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    for _ in range(max(iters, 1)):
        u: torch.Tensor = jvp(feature_fn, (x,), (v,))[1]
        eig = u.flatten(1).pow(2).sum(1)
        (w,) = pullback(u)
        norm = w.flatten(1).norm(dim=1).clamp_min(1e-30)
        v = w / norm.view(-1, *([1] * (x.dim() - 1)))
    return eig / sigma**2


def representation_fn(
    model: Classifier, layer: str | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The representation whose Fisher is measured: model.features (penultimate) by default, or
    the flattened output of any named submodule (e.g. 'body.layer3')."""
    if layer is None or layer in ("", "penultimate"):
        return model.features
    modules = dict(model.named_modules())
    if layer not in modules:
        choices = ", ".join(name for name in modules if name)
        raise KeyError(f"unknown layer {layer!r}: choose one of {choices}")
    module = modules[layer]

    def features(x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            model(x)
        finally:
            handle.remove()
        return captured[0].flatten(1)

    return features


@full_precision
def compute_input_fisher(
    model: Classifier,
    x: torch.Tensor,
    *,
    method: str,
    probes: int,
    sigma: float,
    generator: torch.Generator | None = None,
    batch_size: int = 128,
    layer: str | None = None,
) -> TraceEstimate:
    """Mean input-Fisher trace of a representation (default penultimate) over the samples x."""
    if method not in FISHER_METHODS:
        raise ValueError(f"unknown input Fisher method {method!r}: choose one of {FISHER_METHODS}")
    model.eval()
    fn = representation_fn(model, layer)
    parts = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        if method == "exact":
            parts.append(input_fisher_trace_exact(fn, xb, sigma))
        else:
            parts.append(input_fisher_trace_hutchinson(fn, xb, probes, sigma, generator))
    return _summarise(torch.cat(parts).detach())


@full_precision
def compute_input_fisher_eigenvalue(
    model: Classifier,
    x: torch.Tensor,
    *,
    iters: int,
    sigma: float,
    generator: torch.Generator | None = None,
    batch_size: int = 128,
    layer: str | None = None,
) -> TraceEstimate:
    """Mean over x of the largest eigenvalue of the input Fisher of a representation."""
    model.eval()
    fn = representation_fn(model, layer)
    parts = [
        input_fisher_top_eigenvalue(fn, x[start : start + batch_size], iters, sigma, generator)
        for start in range(0, len(x), batch_size)
    ]
    return _summarise(torch.cat(parts).detach())


def layer_of(param_name: str) -> str:
    """The module a parameter belongs to: 'body.0.weight' -> 'body.0'."""
    return param_name.rsplit(".", 1)[0]


def per_sample_grad_sq_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per sample and per parameter tensor, ||d log p(y|x) / d w||^2, by torch.func's vmap."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def log_prob(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        # -cross_entropy is log p(y|x); indexing by a batched label is not vmap-able.
        return -F.cross_entropy(logits, yi.unsqueeze(0))

    grads = vmap(grad(log_prob), in_dims=(None, 0, 0))(params, x, y)
    return {k: g.flatten(1).pow(2).sum(1) for k, g in grads.items()}


@dataclass(frozen=True)
class WeightFisher:
    """Trace of the weight Fisher: total (with its standard error) and per layer."""

    trace: TraceEstimate
    per_layer: dict[str, float]
    fisher_type: str


@full_precision
def compute_weight_fisher(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fisher_type: str,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> WeightFisher:
    """tr F(w) = E ||g||^2 over x (and y ~ p_w(y|x) for the true Fisher), in eval mode."""
    if fisher_type not in WEIGHT_FISHER_TYPES:
        raise ValueError(
            f"unknown weight Fisher type {fisher_type!r}: choose one of {WEIGHT_FISHER_TYPES}"
        )
    model.eval()
    totals: list[torch.Tensor] = []
    layer_sums: dict[str, float] = {}
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        if fisher_type == "true":
            with torch.no_grad():
                probs = F.softmax(model(xb), dim=1)
            yb = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            yb = y[start : start + batch_size]
        sq = per_sample_grad_sq_norms(model, xb, yb)
        totals.append(torch.stack(list(sq.values())).sum(0))
        for name, values in sq.items():
            layer = layer_of(name)
            layer_sums[layer] = layer_sums.get(layer, 0.0) + float(values.sum())
    n = len(x)
    return WeightFisher(
        trace=_summarise(torch.cat(totals)),
        per_layer={k: v / n for k, v in layer_sums.items()},
        fisher_type=fisher_type,
    )
