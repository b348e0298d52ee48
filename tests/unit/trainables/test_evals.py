"""Evaluations checked against brute force on small models (PAPER.md sections 3-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainables.config import ArchRef, DataConfig, DatasetRef, ProbeConfig
from trainables.data import build_dataset
from trainables.evals.fisher import (
    compute_input_fisher,
    compute_weight_fisher,
    input_fisher_trace_exact,
    input_fisher_trace_hutchinson,
)
from trainables.evals.transfer import fit_probe, run_raw_pixel_probe
from trainables.models import ModelInput, build_model

pytestmark = pytest.mark.unit


def small_model(seed: int = 0, arch: str = "small_cnn") -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ArchRef(arch, 0.25), ModelInput(1, 8, (0.3,), (0.4,)), 4).eval()


def finite_difference_jacobian(fn, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:  # type: ignore[no-untyped-def]
    x = x.double()
    flat = x.flatten()
    cols = []
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        cols.append((fn((flat + e).view_as(x)) - fn((flat - e).view_as(x))).flatten() / (2 * h))
    return torch.stack(cols, dim=1)


def test_exact_input_fisher_matches_a_finite_difference_jacobian() -> None:
    model = small_model().double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    exact = input_fisher_trace_exact(model.features, x, sigma=2.0)
    for i in range(3):
        jac = finite_difference_jacobian(lambda z: model.features(z), x[i : i + 1])
        assert exact[i].item() == pytest.approx(jac.pow(2).sum().item() / 4.0, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hutchinson_matches_the_exact_trace_within_three_standard_errors(seed: int) -> None:
    model = small_model(seed)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    exact = input_fisher_trace_exact(model.features, x)
    gen = torch.Generator().manual_seed(seed)
    probes = 64
    # Per-sample estimates from single probes give the estimator's own standard error.
    singles = torch.stack(
        [input_fisher_trace_hutchinson(model.features, x, 1, generator=gen) for _ in range(probes)]
    )
    est = singles.mean(0)
    se = singles.std(0) / probes**0.5
    assert ((est - exact).abs() <= 3 * se + 1e-6).float().mean() >= 0.95
    assert est.mean().item() == pytest.approx(exact.mean().item(), rel=0.1)


def test_input_fisher_summary_reports_mean_and_stderr() -> None:
    model = small_model()
    x = torch.rand(20, 1, 8, 8)
    summary = compute_input_fisher(model, x, method="exact", probes=0, sigma=1.0)
    exact = input_fisher_trace_exact(model.features, x)
    assert summary.mean == pytest.approx(exact.mean().item(), rel=1e-5)
    assert summary.stderr == pytest.approx(exact.std().item() / 20**0.5, rel=1e-4)
    assert summary.n == 20


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
@pytest.mark.parametrize("fisher_type", ["empirical", "true"])
def test_weight_fisher_matches_a_per_sample_loop(arch: str, fisher_type: str) -> None:
    model = small_model(arch=arch)
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(6))
    result = compute_weight_fisher(
        model,
        x,
        y,
        fisher_type=fisher_type,
        generator=torch.Generator().manual_seed(7),
        batch_size=5,
    )
    # Brute force: the same labels (sampled with the same generator, same batches), one
    # backward pass per sample.
    gen = torch.Generator().manual_seed(7)
    labels = []
    for start in range(0, 12, 5):
        if fisher_type == "true":
            with torch.no_grad():
                probs = F.softmax(model(x[start : start + 5]), 1)
            labels.append(torch.multinomial(probs, 1, generator=gen).squeeze(1))
        else:
            labels.append(y[start : start + 5])
    yy = torch.cat(labels)
    totals, per_layer = [], {}
    for i in range(12):
        model.zero_grad()
        (-F.cross_entropy(model(x[i : i + 1]), yy[i : i + 1])).backward()
        total = 0.0
        for name, p in model.named_parameters():
            sq = p.grad.pow(2).sum().item()
            total += sq
            layer = name.rsplit(".", 1)[0]
            per_layer[layer] = per_layer.get(layer, 0.0) + sq / 12
        totals.append(total)
    assert result.trace.mean == pytest.approx(np.mean(totals), rel=1e-5)
    assert set(result.per_layer) == set(per_layer)
    for layer, value in per_layer.items():
        assert result.per_layer[layer] == pytest.approx(value, rel=1e-4, abs=1e-10)


def test_probe_reaches_sklearn_quality_and_chooses_c_on_validation() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 10)) * 3
    y = rng.integers(0, 3, 300)
    f = centers[y] + rng.normal(size=(300, 10))
    result = fit_probe(f[:200], y[:200], f[200:], y[200:], ProbeConfig(c_grid=(0.001, 1.0)))
    assert result.test_acc > 0.9
    assert result.c in (0.001, 1.0)
    assert result.n_train == 200 and result.n_test == 100 and result.feature_dim == 10


def test_raw_pixel_probe_on_digits_is_a_strong_baseline() -> None:
    target = build_dataset(DatasetRef("digits", (5, 6, 7, 8, 9)), DataConfig())
    assert run_raw_pixel_probe(target, ProbeConfig(c_grid=(0.1, 1.0))).test_acc > 0.9


def test_power_iteration_matches_eigvalsh_of_the_explicit_fisher() -> None:
    from trainables.evals.fisher import input_fisher_top_eigenvalue

    model = small_model(3).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    eig = input_fisher_top_eigenvalue(
        model.features, x, iters=200, sigma=0.5, generator=torch.Generator().manual_seed(0)
    )
    for i in range(4):
        jac = torch.autograd.functional.jacobian(
            lambda z: model.features(z).squeeze(0), x[i : i + 1]
        )
        j = jac.reshape(jac.shape[0], -1)
        top = torch.linalg.eigvalsh(j.T @ j / 0.25)[-1]
        assert eig[i].item() == pytest.approx(top.item(), rel=1e-6)


def test_representation_layer_is_a_parameter() -> None:
    from trainables.evals.fisher import compute_input_fisher, representation_fn

    model = small_model(arch="resnet18")
    x = torch.rand(5, 1, 8, 8)
    inner = representation_fn(model, "body.layer2")
    assert inner(x).shape[0] == 5 and inner(x).shape[1] != model.feature_dim
    assert torch.equal(representation_fn(model, None)(x), model.features(x))
    a = compute_input_fisher(model, x, method="exact", probes=0, sigma=1.0, layer="body.layer2")
    b = compute_input_fisher(model, x, method="exact", probes=0, sigma=1.0)
    assert a.mean != pytest.approx(b.mean)
    with pytest.raises(KeyError, match=r"body\.layer1"):
        representation_fn(model, "body.layer9")


@pytest.mark.parametrize("c", [0.05, 1.0, 20.0])
def test_lbfgs_probe_reaches_sklearns_loss_and_accuracy(c: float) -> None:
    from sklearn.linear_model import LogisticRegression

    from trainables.evals.probe import fit_linear_probe, probe_objective

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 30))
    y = rng.integers(0, 5, 900)
    f = (centers[y] + 1.5 * rng.normal(size=(900, 30))).astype(np.float32)
    tr, te = slice(0, 600), slice(600, 900)
    ours = fit_linear_probe(torch.from_numpy(f[tr]), torch.from_numpy(y[tr]), 5, c, tol=1e-8)
    x = (torch.from_numpy(f[tr]) - ours.mean) / ours.std
    sk = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x.numpy(), y[tr])
    sk_loss = float(
        probe_objective(
            torch.from_numpy(sk.coef_).float(),
            torch.from_numpy(sk.intercept_).float(),
            x,
            torch.from_numpy(y[tr]),
            c,
        )
    )
    assert ours.loss == pytest.approx(sk_loss, rel=1e-4, abs=1e-6)
    x_test = (torch.from_numpy(f[te]) - ours.mean) / ours.std
    assert ours.accuracy(torch.from_numpy(f[te]), torch.from_numpy(y[te])) == pytest.approx(
        sk.score(x_test.numpy(), y[te]), abs=1 / 300 + 1e-9
    )


def test_inverting_an_identity_network_recovers_the_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from trainables.config import InversionConfig
    from trainables.evals.inversion import run_inversion, save_inversion_grid

    x0 = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    result = run_inversion(
        lambda x: x.flatten(1), x0, InversionConfig(steps=300, step_size=0.05, start="noise")
    )
    assert result.psnr > 40
    assert result.ssim > 0.99
    assert ((result.reconstructions >= 0) & (result.reconstructions <= 1)).all()
    png = save_inversion_grid(tmp_path / "grid.png", x0, [result.reconstructions], scale=2)
    from PIL import Image

    assert Image.open(png).size[0] > 6 * 32


def test_regularisers_change_the_reconstruction_and_tv_smooths_it() -> None:
    from trainables.config import InversionConfig
    from trainables.evals.inversion import run_inversion, total_variation

    model = small_model(0)
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    mean = torch.full((1, 8, 8), 0.4)
    plain = run_inversion(model.features, x0, InversionConfig(steps=60, step_size=0.05), mean)
    smooth = run_inversion(
        model.features, x0, InversionConfig(steps=60, step_size=0.05, tv_weight=1.0), mean
    )
    fisher = run_inversion(
        model.features, x0, InversionConfig(steps=20, step_size=0.05, fisher_weight=0.1), mean
    )
    assert (
        total_variation(smooth.reconstructions).mean()
        < total_variation(plain.reconstructions).mean()
    )
    assert not torch.equal(fisher.reconstructions, plain.reconstructions)
    assert 0 <= plain.relative_error < 1


@pytest.mark.parametrize(("channels", "side"), [(1, 8), (3, 32), (1, 28), (3, 11)])
def test_psnr_and_ssim_match_torchmetrics(channels: int, side: int) -> None:
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    from trainables.evals.inversion import measure_reconstruction

    gen = torch.Generator().manual_seed(side)
    x0 = torch.rand(5, channels, side, side, generator=gen)
    # From unrelated noise to near copies: SSIM over its whole range.
    noise = torch.rand(5, channels, side, side, generator=gen)
    weight = torch.linspace(0.0, 1.0, 5).view(5, 1, 1, 1)
    x = weight * x0 + (1 - weight) * noise + 0.01 * torch.randn(x0.shape, generator=gen)
    x = x.clamp(0, 1)
    psnr, ssim = measure_reconstruction(x0, x)
    for i in range(5):
        a, b = x[i : i + 1], x0[i : i + 1]
        reference = float(peak_signal_noise_ratio(a, b, data_range=1.0))
        assert psnr[i] == pytest.approx(reference, abs=1e-4)
        reference = float(structural_similarity_index_measure(a, b, data_range=1.0))
        assert ssim[i] == pytest.approx(reference, abs=1e-5)
    assert ssim[0] < 0.2 < 0.9 < ssim[-1]
    same_psnr, same_ssim = measure_reconstruction(x0, x0.clone())
    assert same_ssim == pytest.approx([1.0] * 5, abs=1e-6)
    assert all(p == float("inf") for p in same_psnr)


def test_ssim_of_images_smaller_than_its_window_is_defined() -> None:
    from trainables.evals.inversion import measure_reconstruction

    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    _, ssim = measure_reconstruction(x0, x0.clone())
    assert ssim == pytest.approx([1.0, 1.0], abs=1e-6)
    _, worse = measure_reconstruction(x0, (x0 + 0.3).clamp(0, 1))
    assert all(s < 1.0 for s in worse)


def test_the_inversion_grid_is_torchvisions_save_image_pixel_for_pixel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image
    from torch.nn import functional as F
    from torchvision.utils import save_image

    from trainables.evals.inversion import save_inversion_grid

    gen = torch.Generator().manual_seed(0)
    originals = torch.rand(3, 1, 8, 8, generator=gen)
    rows = [torch.rand(3, 1, 8, 8, generator=gen), torch.rand(3, 1, 8, 8, generator=gen)]
    ours = save_inversion_grid(tmp_path / "ours.png", originals, rows, scale=2)
    images = F.interpolate(torch.cat([originals, *rows]).expand(-1, 3, -1, -1), scale_factor=2)
    save_image(images, str(tmp_path / "tv.png"), nrow=3, padding=2, pad_value=1.0)
    assert np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(tmp_path / "tv.png")))


def test_the_inversion_settles_and_stands_beside_its_no_information_references() -> None:
    from trainables.config import InversionConfig
    from trainables.data import TensorImageSet
    from trainables.evals import mean_image
    from trainables.evals.inversion import psnr_per_image, run_inversion, ssim_per_image

    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 16, 16, generator=gen)
    train = torch.rand(40, 1, 16, 16, generator=gen)
    mean = mean_image(TensorImageSet(train, np.zeros(40, dtype=np.int64)))
    assert torch.allclose(mean, train.mean(0), atol=1e-6)

    settled = run_inversion(lambda x: x.flatten(1), x0, InversionConfig(steps=300), mean)
    assert settled.converged and abs(settled.final_improvement) < 0.01
    # The references, by brute force: the mean image and the starting image against x0.
    flat = mean.expand_as(x0)
    assert settled.mean_image_psnr == pytest.approx(float(psnr_per_image(flat, x0).mean()))
    assert settled.mean_image_ssim == pytest.approx(float(ssim_per_image(flat, x0).mean()))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)) / 20
    start = (mean + noise).clamp(0, 1)  # the default start: the mean image, jittered
    assert settled.start_psnr == pytest.approx(float(psnr_per_image(start, x0).mean()))
    assert settled.start_relative_error > settled.relative_error
    assert settled.psnr > settled.mean_image_psnr  # identity features keep the whole image

    # Fixed-size normalised steps never settle: they hop around the optimum to the last step.
    hopping = run_inversion(
        lambda x: x.flatten(1),
        x0,
        InversionConfig(
            steps=300, step_size=1.0, optimizer="normalized", schedule="constant", start="noise"
        ),
    )
    assert not hopping.converged and hopping.mean_image_psnr is None
    grey = (0.5 + noise).clamp(0, 1)  # Engstrom et al.'s start
    assert hopping.start_psnr == pytest.approx(float(psnr_per_image(grey, x0).mean()))
    with pytest.raises(ValueError, match="needs the source's mean image"):
        run_inversion(lambda x: x.flatten(1), x0, InversionConfig(steps=2))


def test_restarts_keep_for_each_image_the_start_of_smallest_feature_error() -> None:
    from trainables.config import InversionConfig
    from trainables.evals.inversion import (
        invert_representation,
        optimise_inversion,
        starting_images,
    )

    model = small_model(0)
    x0 = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cfg = InversionConfig(steps=40, step_size=0.05, start="noise", restarts=3)
    kept = invert_representation(model.features, x0, cfg)
    # Brute force: each restart optimised on its own, from the starts the restarts draw.
    starts = starting_images(x0, cfg, torch.Generator().manual_seed(cfg.seed)).split(len(x0))
    alone = [
        optimise_inversion(model.features, x0, s, cfg, torch.Generator().manual_seed(0))
        for s in starts
    ]
    errors = torch.stack([error for _, _, error, _ in alone])  # (restart, image)
    best = errors.argmin(dim=0)
    assert len(set(best.tolist())) > 1  # the images do not all keep the same restart
    assert torch.allclose(kept.error, errors.min(dim=0).values, rtol=1e-4, atol=1e-6)
    for i, r in enumerate(best.tolist()):
        assert torch.allclose(kept.x[i], alone[r][0][i], atol=1e-4)
        assert torch.allclose(kept.start_error[i], alone[r][1][i], atol=1e-6)
        assert torch.equal(kept.start[i], starts[r][i])
    # Restart 0 is the single start's draw: one restart is the same optimisation.
    single = invert_representation(model.features, x0, InversionConfig(40, 0.05, start="noise"))
    assert torch.allclose(single.x, alone[0][0], atol=1e-4)
    assert (kept.error <= single.error + 1e-6).all()


def test_the_estimators_stay_in_fp32_inside_a_bf16_autocast_region() -> None:
    """Called where a trial's bf16 autocast is on, the Fisher traces, the features and the probe
    give exactly their fp32 values: they turn autocast off rather than sum squares in bf16."""
    from trainables.evals.probe import fit_linear_probe
    from trainables.evals.transfer import extract_features

    model = small_model()
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(6))

    def measure() -> tuple[float, float, torch.Tensor, torch.Tensor]:
        fisher = compute_input_fisher(model, x, method="exact", probes=0, sigma=1.0)
        weight = compute_weight_fisher(
            model, x, y, fisher_type="true", generator=torch.Generator().manual_seed(7)
        )
        features = extract_features(model, x)  # type: ignore[arg-type]
        probe = fit_linear_probe(features, y, 4, 1.0)
        return fisher.mean, weight.trace.mean, features, probe.weight

    plain = measure()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # the region is live
        inside = measure()
    assert inside[0] == plain[0] and inside[1] == plain[1]
    assert torch.equal(inside[2], plain[2]) and torch.equal(inside[3], plain[3])
