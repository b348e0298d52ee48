"""PGD: the mathematical properties of the attack, under both threat models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainables.attacks import THREAT_MODELS, clip_to_box, fgsm_rs, get_threat_model, pgd

pytestmark = pytest.mark.unit


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)).eval()


def make_batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    # Some pixels exactly at the box edges, where clipping matters.
    x[:, :, 0, :] = 0.0
    x[:, :, -1, :] = 1.0
    return x, torch.randint(0, 5, (n,), generator=g)


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 0.3), ("l2", 0.5), ("l2", 2.0)])
def test_pgd_stays_in_ball_and_box(norm: str, eps: float) -> None:
    model = make_model()
    x, y = make_batch()
    x_adv = pgd(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        steps=10,
        step_size=eps / 2,
        generator=torch.Generator().manual_seed(0),
    )
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (lp_norm(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-7).all()
    assert (x_adv != x).any(), "the attack must move the input"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_changes_nothing(norm: str) -> None:
    model = make_model()
    x, y = make_batch()
    x_adv = pgd(model, x, y, norm=norm, eps=0.0, steps=10, step_size=0.1)
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_attack_raises_the_loss(norm: str, eps: float) -> None:
    model = make_model()
    x, y = make_batch(128)
    clean = F.cross_entropy(model(x), y, reduction="none")
    x_adv = pgd(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        steps=10,
        step_size=2.5 * eps / 10,
        generator=torch.Generator().manual_seed(0),
    )
    adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert adv.mean() > clean.mean() + 0.05
    # Without a random start every step ascends from x: no sample may end below its clean loss
    # by more than numerical noise on average.
    x_det = pgd(
        model, x, y, norm=norm, eps=eps, steps=10, step_size=2.5 * eps / 10, random_start=False
    )
    assert F.cross_entropy(model(x_det), y) >= clean.mean()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_idempotent_and_keeps_points_inside(norm: str) -> None:
    threat = get_threat_model(norm)
    delta = torch.randn(16, 1, 8, 8) * 3
    once = threat.project(delta, 0.5)
    assert torch.allclose(threat.project(once, 0.5), once, atol=1e-7)
    inside = threat.project(delta, 0.5) * 0.5
    assert torch.allclose(threat.project(inside, 0.5), inside, atol=1e-7)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_inside_the_ball(norm: str) -> None:
    x, _ = make_batch(64)
    delta = THREAT_MODELS[norm].random_start(x, 0.3, torch.Generator().manual_seed(0))
    assert (lp_norm(delta, norm) <= 0.3 + 1e-6).all()
    assert (lp_norm(delta, norm) > 0).all()


def test_box_clipping_never_leaves_the_ball() -> None:
    x, _ = make_batch()
    delta = get_threat_model("l2").project(torch.randn_like(x), 1.0)
    clipped = clip_to_box(x, delta)
    assert ((x + clipped) >= 0).all() and ((x + clipped) <= 1).all()
    assert (clipped.abs() <= delta.abs() + 1e-7).all()


def test_gradient_is_taken_with_respect_to_the_perturbation_only() -> None:
    model = make_model()
    x, y = make_batch()
    pgd(model, x, y, norm="linf", eps=0.1, steps=3, step_size=0.05)
    assert all(p.grad is None for p in model.parameters())


def linear_score() -> tuple[nn.Module, torch.Tensor]:
    """A linear score w.x on 8x8 inputs and its w: its worst Linf perturbation is eps * sign(w)."""
    torch.manual_seed(0)
    w = torch.randn(64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(w.view(1, -1))
    return model, w


def test_linf_pgd_on_a_linear_model_reaches_the_closed_form_worst_case() -> None:
    # For a linear score w.x the worst Linf perturbation is eps * sign(w) (inside the box).
    model, w = linear_score()
    x = torch.full((4, 1, 8, 8), 0.5)
    eps = 0.1

    def loss_fn(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return out.sum()

    x_adv = pgd(
        model,
        x,
        torch.zeros(4, dtype=torch.long),
        norm="linf",
        eps=eps,
        steps=5,
        step_size=eps,
        random_start=False,
        loss_fn=loss_fn,
    )
    assert torch.allclose(x_adv - x, eps * w.sign().view(1, 1, 8, 8).expand_as(x), atol=1e-6)


def test_unknown_norm_lists_the_choices() -> None:
    with pytest.raises(KeyError, match="l2, linf"):
        get_threat_model("l1")


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_fgsm_rs_and_pgd_agree_on_a_linear_models_worst_case(norm: str, eps: float) -> None:
    # For a linear score w.x (x well inside the box) the worst case is eps * sign(w) under Linf
    # and eps * w / ||w|| under L2. Under Linf one FGSM step of size >= 2 eps from any start in
    # the ball reaches it exactly; under L2 the projected step tends to it as the step grows
    # (cosine >= 1 - O(eps / step)). PGD from the clean input reaches it.
    torch.manual_seed(0)
    w = torch.randn(64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(w.view(1, -1))
    x = torch.full((8, 1, 8, 8), 0.5)
    y = torch.zeros(8, dtype=torch.long)

    def loss_fn(out: torch.Tensor, _: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return out.sum() if reduction == "mean" else out.squeeze(1)

    direction = w.sign() if norm == "linf" else w / w.norm()
    worst = (eps * direction).view(1, 1, 8, 8).expand_as(x)
    step = 2 * eps if norm == "linf" else 1000 * eps
    x_fgsm = fgsm_rs(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        step_size=step,
        generator=torch.Generator().manual_seed(1),
        loss_fn=loss_fn,
    )
    x_pgd = pgd(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        steps=20,
        step_size=eps / 4,
        loss_fn=loss_fn,
        random_start=False,
    )
    assert torch.allclose(x_fgsm - x, worst, atol=1e-3 * eps)
    assert torch.allclose(x_pgd - x, worst, atol=1e-3 * eps)


def test_restarts_keep_each_samples_worst_perturbation() -> None:
    model = make_model()
    x, y = make_batch(64)
    single = [
        pgd(
            model,
            x,
            y,
            norm="linf",
            eps=0.1,
            steps=2,
            step_size=0.05,
            generator=torch.Generator().manual_seed(s),
        )
        for s in range(3)
    ]
    losses = torch.stack([F.cross_entropy(model(xa), y, reduction="none") for xa in single])
    gen = torch.Generator().manual_seed(0)
    best = pgd(
        model, x, y, norm="linf", eps=0.1, steps=2, step_size=0.05, restarts=3, generator=gen
    )
    best_loss = F.cross_entropy(model(best), y, reduction="none")
    # Same random stream: restart r of the 3-restart run equals the r-th single run only for r = 0,
    # so compare against what any restart can reach: never below the first restart.
    assert (best_loss >= losses[0] - 1e-6).all()
    assert (lp_norm(best - x, "linf") <= 0.1 + 1e-6).all()
    assert best_loss.mean() >= losses.mean(0).mean()


def test_pgd_never_lowers_the_loss_below_clean_on_average() -> None:
    for seed in range(3):
        model = make_model(seed)
        x, y = make_batch(64, seed)
        clean = F.cross_entropy(model(x), y)
        adv = pgd(
            model,
            x,
            y,
            norm="l2",
            eps=0.3,
            steps=5,
            step_size=0.1,
            generator=torch.Generator().manual_seed(seed),
        )
        assert F.cross_entropy(model(adv), y) >= clean


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_under_bf16_autocast_keeps_its_properties(norm: str, eps: float) -> None:
    """As a trial runs it with precision bf16 (CUDA, or a CPU with native bf16): the forward in
    bf16, the perturbation in fp32. It stays in the ball and the box, raises the loss as the
    fp32 attack does, and reaches the closed-form worst case of a linear model."""
    model = make_model()
    x, y = make_batch(128)
    kwargs = {"norm": norm, "eps": eps, "steps": 10, "step_size": 2.5 * eps / 10}
    fp32 = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kwargs)  # type: ignore[arg-type]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
        bf16 = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kwargs)  # type: ignore[arg-type]
    assert bf16.dtype == torch.float32
    assert bf16.min() >= 0.0 and bf16.max() <= 1.0
    assert (lp_norm(bf16 - x, norm) <= eps * (1 + 1e-5) + 1e-7).all()
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
        loss_fp32 = F.cross_entropy(model(fp32), y)
        loss_bf16 = F.cross_entropy(model(bf16), y)
    assert loss_bf16 > clean + 0.05
    assert loss_bf16 == pytest.approx(float(loss_fp32), rel=0.05)
    # A linear score's worst Linf perturbation is eps * sign(w): bf16 rounding of the forward
    # pass does not change the gradient's sign.
    linear, w = linear_score()
    x0 = torch.full((4, 1, 8, 8), 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        worst = pgd(
            linear,
            x0,
            torch.zeros(4, dtype=torch.long),
            norm="linf",
            eps=0.1,
            steps=5,
            step_size=0.1,
            random_start=False,
            loss_fn=lambda out, _: out.float().sum(),
        )
    expected = 0.1 * w.sign().view(1, 1, 8, 8).expand_as(x0)
    assert torch.allclose(worst - x0, expected, atol=1e-6)
