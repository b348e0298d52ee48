"""Inversion of a representation (Engstrom et al. 2019; PAPER.md section 5).

Reconstruct x0 from its representation R(x0): minimise ||R(x) - R(x0)|| / ||R(x0)|| over x in
[0, 1], from x = 0.5 + N(0, 1) / 20, with normalised-gradient (L2 PGD) steps. Extra
regularisers can be added to the objective (total variation; a penalty on the input Fisher of
the representation at x, estimated with one Hutchinson probe), so that the plain and the
regularised reconstructions can be reported side by side. Quality is measured against x0 by
PSNR and SSIM from torchmetrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.func import jvp


@dataclass(frozen=True)
class InversionConfig:
    """Steps, step size and regulariser weights of an inversion."""

    steps: int = 200
    step_size: float = 0.1
    tv_weight: float = 0.0
    fisher_weight: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class InversionResult:
    """Reconstructions and their quality against the originals (means over images)."""

    reconstructions: torch.Tensor
    psnr: float
    ssim: float
    relative_error: float
    psnr_per_image: list[float]
    ssim_per_image: list[float]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image (mean absolute difference of neighbours)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def invert_representation(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    cfg: InversionConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstructions of x0 from feature_fn(x0) and their final relative feature errors."""
    gen = torch.Generator(device=x0.device).manual_seed(cfg.seed)
    with torch.no_grad():
        target = feature_fn(x0).flatten(1)
        target_norm = target.norm(dim=1).clamp_min(1e-12)
    noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
    x = (0.5 + noise / 20).clamp(0.0, 1.0)
    shape = (-1, *([1] * (x0.dim() - 1)))
    for _ in range(cfg.steps):
        x = x.detach().requires_grad_(True)
        rel = (feature_fn(x).flatten(1) - target).norm(dim=1) / target_norm
        objective = rel
        if cfg.tv_weight > 0:
            objective = objective + cfg.tv_weight * total_variation(x)
        if cfg.fisher_weight > 0:
            v = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            _, jv = jvp(feature_fn, (x,), (v,))
            objective = objective + cfg.fisher_weight * jv.flatten(1).pow(2).sum(1)
        (g,) = torch.autograd.grad(objective.sum(), [x])
        with torch.no_grad():
            g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            x = (x - cfg.step_size * g / g_norm).clamp(0.0, 1.0)
    with torch.no_grad():
        rel = (feature_fn(x).flatten(1) - target).norm(dim=1) / target_norm
    return x.detach(), rel


def measure_reconstruction(x0: torch.Tensor, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """PSNR (dB) and SSIM of each reconstruction against its original (data range 1)."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    psnr = [
        float(peak_signal_noise_ratio(x[i : i + 1], x0[i : i + 1], data_range=1.0))
        for i in range(len(x0))
    ]
    # SSIM's 11x11 Gaussian window needs images at least that large: smaller ones use a
    # window of their own size (odd).
    side = min(x0.shape[-2:])
    kernel = min(11, side if side % 2 == 1 else side - 1)
    ssim = [
        float(
            structural_similarity_index_measure(
                x[i : i + 1], x0[i : i + 1], data_range=1.0, kernel_size=kernel
            )
        )
        for i in range(len(x0))
    ]
    return psnr, ssim


def run_inversion(
    feature_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, cfg: InversionConfig
) -> InversionResult:
    """Invert and measure: reconstructions with mean PSNR, SSIM and relative feature error."""
    x, rel = invert_representation(feature_fn, x0, cfg)
    psnr, ssim = measure_reconstruction(x0, x)
    return InversionResult(
        reconstructions=x,
        psnr=sum(psnr) / len(psnr),
        ssim=sum(ssim) / len(ssim),
        relative_error=float(rel.mean()),
        psnr_per_image=psnr,
        ssim_per_image=ssim,
    )


def save_inversion_grid(
    path: Path, originals: torch.Tensor, reconstructions: list[torch.Tensor], scale: int = 1
) -> Path:
    """A PNG grid: the originals in the first row, each set of reconstructions in the next."""
    from torch.nn import functional as F
    from torchvision.utils import save_image

    rows = [originals, *reconstructions]
    images = torch.cat([r.detach().cpu().float() for r in rows])
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(path), nrow=len(originals), padding=2, pad_value=1.0)
    return path
