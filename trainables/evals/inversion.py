"""Inversion of a representation (Engstrom et al. 2019; PAPER.md section 5).

Reconstruct x0 from its representation R(x0): minimise ||R(x) - R(x0)|| / ||R(x0)|| over x in
[0, 1] by Adam on the pixels (or Engstrom et al.'s normalised-gradient steps) with a step size
that decays to 0 over the steps (cosine), so that the iterates settle and the last tenth of the
steps says whether the objective still falls. The start is the source's mean image plus
N(0, 1) / 20 by default, or Engstrom et al.'s 0.5 + N(0, 1) / 20: from the mean image the
optimiser reaches smaller feature errors (measured on the demo's networks: 0.003-0.01 against
0.01-0.05 from grey), and whatever the reconstruction gains over its start is what the
representation told it. Several restarts per image may be run, keeping the one of smallest final
feature error (the objective, not the unknown original, chooses). Extra
regularisers can be added to the objective (total variation; a penalty on the input Fisher of
the representation at x, estimated with one Hutchinson probe), so that the plain and the
regularised reconstructions can be reported side by side.

Quality is measured against x0 by PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma
1.5, K1 = 0.01, K2 = 0.03, reflect padding, averaged over every pixel: the numbers torchmetrics
gives, which the tests check), computed here so that an evaluation worker does not import
torchmetrics (seconds per process). Beside them, the references that say what a number means:
the same measures of the starting image and of the dataset's mean image (what is known without
any information about the image: the "no information" line), the relative feature error of the
start and of the end, and the objective's fall over the last tenth of the steps (a fraction of
its starting value).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.func import jvp

from trainables.config import (
    INVERSION_OPTIMIZERS,
    INVERSION_SCHEDULES,
    INVERSION_STARTS,
    InversionConfig,
)

# The objective has settled when it moved (its largest minus smallest value) by less than this
# fraction of its starting value over the last tenth of the steps.
CONVERGED_BELOW = 0.01


@dataclass(frozen=True)
class InversionResult:
    """Reconstructions, their quality against the originals (means over images), and the
    references beside them."""

    reconstructions: torch.Tensor
    psnr: float
    ssim: float
    relative_error: float
    psnr_per_image: list[float]
    ssim_per_image: list[float]
    start_psnr: float
    start_ssim: float
    start_relative_error: float
    final_improvement: float
    converged: bool
    mean_image_psnr: float | None = None
    mean_image_ssim: float | None = None


@dataclass(frozen=True)
class Inverted:
    """What the optimisation returns: the reconstructions, the starting images, the relative
    feature error of each at the start and at the end, and the mean objective at every step
    (before that step's update)."""

    x: torch.Tensor
    start: torch.Tensor
    start_error: torch.Tensor
    error: torch.Tensor
    objective: list[float]

    def _tail(self) -> list[float]:
        """The objective over the last tenth of the steps, from the value before them."""
        return self.objective[-max(1, len(self.objective) // 10) - 1 :]

    @property
    def final_improvement(self) -> float:
        """The objective's fall over the last tenth of the steps, as a fraction of its value at
        the start (0 = settled): relative to the start, not to the tail's own value, so that an
        objective that falls toward 0 in a perfect reconstruction counts as settled."""
        if len(self.objective) < 2:
            return math.nan
        tail = self._tail()
        return (tail[0] - tail[-1]) / max(abs(self.objective[0]), 1e-12)

    @property
    def final_spread(self) -> float:
        """How far the objective moved within the last tenth of the steps (its largest minus
        its smallest value there), as a fraction of its starting value: an iterate that hops
        around the optimum moves, even when it ends where the tail began."""
        if len(self.objective) < 2:
            return math.nan
        tail = self._tail()
        return (max(tail) - min(tail)) / max(abs(self.objective[0]), 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image (mean absolute difference of neighbours)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def step_size_at(cfg: InversionConfig, step: int) -> float:
    """The step size of a step (0-based): cosine decay from cfg.step_size to 0, or constant."""
    if cfg.schedule == "constant":
        return cfg.step_size
    return cfg.step_size * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))


def starting_images(
    x0: torch.Tensor,
    cfg: InversionConfig,
    gen: torch.Generator,
    mean_image: torch.Tensor | None = None,
) -> torch.Tensor:
    """cfg.restarts starting images for each image of x0, stacked restart-major (restart r of
    image i at r * len(x0) + i): the source's mean image (or 0.5 for start "noise") plus
    N(0, 1) / 20, clipped to [0, 1]. Restart 0 draws what a single start draws."""
    if cfg.start not in INVERSION_STARTS:
        raise ValueError(
            f"inversion start {cfg.start!r} is not one of {', '.join(INVERSION_STARTS)}"
        )
    if cfg.restarts < 1:
        raise ValueError(f"inversion restarts is {cfg.restarts}: it must be at least 1")
    if cfg.start == "mean_image":
        if mean_image is None:
            raise ValueError("inversion start 'mean_image' needs the source's mean image")
        centre = mean_image.to(x0.device, x0.dtype).expand_as(x0)
    else:
        centre = torch.full_like(x0, 0.5)
    draws = [
        torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        for _ in range(cfg.restarts)
    ]
    return torch.cat([(centre + noise / 20).clamp(0.0, 1.0) for noise in draws])


def invert_representation(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    cfg: InversionConfig,
    mean_image: torch.Tensor | None = None,
) -> Inverted:
    """Reconstructions of x0 from feature_fn(x0), with the objective's course. With restarts,
    every start of every image is optimised in one batch (Adam and the normalised step act on
    each image alone, so this is the same as optimising them one by one) and each image keeps
    the reconstruction of smallest final feature error; the objective's course is the mean over
    all of them."""
    if cfg.optimizer not in INVERSION_OPTIMIZERS:
        raise ValueError(
            f"inversion optimizer {cfg.optimizer!r} is not one of {', '.join(INVERSION_OPTIMIZERS)}"
        )
    if cfg.schedule not in INVERSION_SCHEDULES:
        raise ValueError(
            f"inversion schedule {cfg.schedule!r} is not one of {', '.join(INVERSION_SCHEDULES)}"
        )
    gen = torch.Generator(device=x0.device).manual_seed(cfg.seed)
    start = starting_images(x0, cfg, gen, mean_image)
    targets = x0.repeat(cfg.restarts, *([1] * (x0.dim() - 1)))
    x, start_error, error, history = optimise_inversion(feature_fn, targets, start, cfg, gen)
    # The restart of smallest final feature error, per image.
    n = len(x0)
    best = error.view(cfg.restarts, n).argmin(dim=0) * n + torch.arange(n, device=x0.device)
    return Inverted(x[best], start[best], start_error[best], error[best], history)


def _relative_error(
    feature_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> ||R(x) - R(x0)|| / ||R(x0)|| per image."""
    with torch.no_grad():
        target = feature_fn(x0).flatten(1)
        target_norm = target.norm(dim=1).clamp_min(1e-12)

    def relative_error(x: torch.Tensor) -> torch.Tensor:
        return (feature_fn(x).flatten(1) - target).norm(dim=1) / target_norm

    return relative_error


def optimise_inversion(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    start: torch.Tensor,
    cfg: InversionConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """Minimise the objective for each image of x0 from its start: the reconstructions, the
    relative feature errors of the starts and of the reconstructions, and the mean objective at
    every step (before its update)."""
    relative_error = _relative_error(feature_fn, x0)
    with torch.no_grad():
        start_error = relative_error(start)
    x = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([x], lr=cfg.step_size) if cfg.optimizer == "adam" else None
    shape = (-1, *([1] * (x0.dim() - 1)))
    history: list[float] = []
    for step in range(cfg.steps):
        objective = relative_error(x)
        if cfg.tv_weight > 0:
            objective = objective + cfg.tv_weight * total_variation(x)
        if cfg.fisher_weight > 0:
            v = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            # [1], not unpacking: torch.func annotates jvp's result as a 2- or 3-tuple (has_aux).
            jv: torch.Tensor = jvp(feature_fn, (x,), (v,))[1]
            objective = objective + cfg.fisher_weight * jv.flatten(1).pow(2).sum(1)
        history.append(float(objective.detach().mean()))
        (g,) = torch.autograd.grad(objective.sum(), [x])
        size = step_size_at(cfg, step)
        with torch.no_grad():
            if adam is not None:
                for group in adam.param_groups:
                    group["lr"] = size
                x.grad = g
                adam.step()
            else:
                x -= size * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            x.clamp_(0.0, 1.0)
    with torch.no_grad():
        final = relative_error(x)
    return x.detach(), start_error, final, history


def psnr_per_image(
    x: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) of each image of x against its reference."""
    mse = (x.float() - reference.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim_per_image(
    x: torch.Tensor,
    reference: torch.Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity of each image of x (N, C, H, W) against its reference.

    Gaussian window of 2 * int(3.5 * sigma + 0.5) + 1 pixels (11 for sigma 1.5), reflect padding so
    that every pixel has a local statistic, SSIM averaged over channels and pixels. An image
    smaller than the window uses the largest window its padding allows (2 * side - 1)."""
    from torch.nn import functional as F

    x, reference = x.float(), reference.float()
    channels = x.shape[1]
    size = min(2 * int(3.5 * sigma + 0.5) + 1, 2 * min(x.shape[-2:]) - 1)
    pad = (size - 1) // 2
    # On the images' device: the inversion runs on CUDA when the evaluation has a GPU.
    dist = torch.arange(size, dtype=torch.float32, device=x.device) - pad
    g = torch.exp(-((dist / sigma) ** 2) / 2)
    g = g / g.sum()
    kernel = torch.outer(g, g).expand(channels, 1, size, size)
    stack = torch.cat([x, reference, x * x, reference * reference, x * reference])
    local = F.conv2d(F.pad(stack, (pad, pad, pad, pad), mode="reflect"), kernel, groups=channels)
    mu_x, mu_r, xx, rr, xr = local.split(x.shape[0])
    var_x = (xx - mu_x**2).clamp_min(0.0)
    var_r = (rr - mu_r**2).clamp_min(0.0)
    cov = xr - mu_x * mu_r
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_r**2 + c1) * (var_x + var_r + c2)
    )
    return ssim.flatten(1).mean(dim=1)


def measure_reconstruction(x0: torch.Tensor, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """PSNR (dB) and SSIM of each reconstruction against its original (data range 1)."""
    with torch.no_grad():
        return psnr_per_image(x, x0).tolist(), ssim_per_image(x, x0).tolist()


def run_inversion(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    cfg: InversionConfig,
    mean_image: torch.Tensor | None = None,
) -> InversionResult:
    """Invert and measure: reconstructions with mean PSNR, SSIM and relative feature error, and
    the references: the starting images, the dataset's mean image (when given; shape (C, H, W)),
    the start's feature error and whether the objective settled."""
    inverted = invert_representation(feature_fn, x0, cfg, mean_image)
    psnr, ssim = measure_reconstruction(x0, inverted.x)
    start_psnr, start_ssim = measure_reconstruction(x0, inverted.start)
    mean_psnr = mean_ssim = None
    if mean_image is not None:
        flat = mean_image.to(x0.device, x0.dtype).expand_as(x0)
        psnr_m, ssim_m = measure_reconstruction(x0, flat)
        mean_psnr, mean_ssim = _mean(psnr_m), _mean(ssim_m)
    improvement = inverted.final_improvement
    spread = inverted.final_spread
    return InversionResult(
        reconstructions=inverted.x,
        psnr=_mean(psnr),
        ssim=_mean(ssim),
        relative_error=float(inverted.error.mean()),
        psnr_per_image=psnr,
        ssim_per_image=ssim,
        start_psnr=_mean(start_psnr),
        start_ssim=_mean(start_ssim),
        start_relative_error=float(inverted.start_error.mean()),
        final_improvement=improvement,
        # A fall, a rise or a hop: an objective that still moves has not settled.
        converged=spread < CONVERGED_BELOW,
        mean_image_psnr=mean_psnr,
        mean_image_ssim=mean_ssim,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def save_inversion_grid(
    path: Path, originals: torch.Tensor, reconstructions: list[torch.Tensor], scale: int = 1
) -> Path:
    """A PNG grid: the originals in the first row, each set of reconstructions in the next
    (2 white pixels between images, as torchvision's save_image draws it)."""
    import numpy as np
    from PIL import Image
    from torch.nn import functional as F

    rows = [originals, *reconstructions]
    images = torch.cat([r.detach().cpu().float() for r in rows])
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    pad, cols = 2, len(originals)
    n, c, h, w = images.shape
    grid_rows = -(-n // cols)
    grid = torch.ones(c, grid_rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        top, left = (i // cols) * (h + pad) + pad, (i % cols) * (w + pad) + pad
        grid[:, top : top + h, left : left + w] = images[i]
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)
    return path
