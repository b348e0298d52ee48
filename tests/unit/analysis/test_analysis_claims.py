"""Claim checks C1-C6 on synthetic studies with planted answers (real parquet round trips)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.claims import (
    RESULT_COLUMNS,
    check_claims,
    check_distance_gain,
    check_inverted_u,
    check_trend,
    format_claims,
    permutation_p,
    spearman,
    spearman_rows,
)
from analysis.stats import load_tables
from tests.analysis_study import EPS, build_study, noisy

pytestmark = pytest.mark.unit

FALLING = {0.0: 0.95, 0.25: 0.92, 0.5: 0.88, 1.0: 0.80}
RISING = {0.0: 0.80, 0.25: 0.85, 0.5: 0.88, 1.0: 0.95}
INVERTED_U = {0.0: 0.80, 0.25: 0.85, 0.5: 0.90, 1.0: 0.82}
FLAT = dict.fromkeys(EPS, 0.85)


def claims_of(tmp_path: Path, **study: object) -> pd.DataFrame:
    build_study(tmp_path, **study)  # type: ignore[arg-type]
    out = check_claims(load_tables(tmp_path))
    assert list(out.columns) == RESULT_COLUMNS
    return out


def row(claims: pd.DataFrame, claim: str, statistic: str | None = None, **where: str) -> pd.Series:
    sub = claims[claims["claim"] == claim]
    if statistic is not None:
        sub = sub[sub["statistic"] == statistic]
    for column, value in where.items():
        sub = sub[sub[column] == value]
    assert len(sub) == 1, sub
    return sub.iloc[0]


def test_planted_inverted_u_is_found_at_its_interior_peak(tmp_path: Path) -> None:
    claims = claims_of(tmp_path, transfer={"cifar100": noisy(INVERTED_U, 0.005)})
    gain = row(claims, "C2", "best_gain", target="cifar100")
    assert gain["at_eps"] == 0.5
    assert gain["value"] == pytest.approx(0.10)
    assert 0 < gain["ci_low"] < 0.10 < gain["ci_high"]
    assert (gain["n_seeds"], gain["n_eps"]) == (3, 4)
    assert gain["verdict"] == "holds"
    assert "interior peak at eps=0.5" in gain["note"]
    fall = row(claims, "C2", "fall_after_peak", target="cifar100")
    assert fall["value"] == pytest.approx(0.08)
    assert fall["at_eps"] == 1.0 and fall["verdict"] == "holds" and not fall["headline"]


def test_a_gain_without_a_fall_after_an_interior_peak_does_not_hold() -> None:
    # Plateau: 0.5 and 1.0 equal within noise, so the curve does not fall after its peak.
    curve = {
        0.0: np.array([0.79, 0.80, 0.81]),
        0.5: np.array([0.89, 0.90, 0.91]),
        1.0: np.array([0.885, 0.895, 0.905]),
    }
    gain, fall = check_inverted_u(curve)
    assert gain["at_eps"] == 0.5 and gain["ci_low"] > 0
    assert gain["verdict"] == "undetermined"
    assert fall["verdict"] == "undetermined"


def test_a_peak_at_the_largest_eps_holds_but_says_the_fall_is_not_observed() -> None:
    curve = {e: m + np.array([-0.005, 0.0, 0.005]) for e, m in RISING.items()}
    gain, fall = check_inverted_u(curve)
    assert gain["verdict"] == "holds" and gain["at_eps"] == 1.0
    assert "fall after it is not observed" in str(gain["note"])
    assert fall["verdict"] == "undetermined"


def test_a_flat_transfer_curve_never_holds(tmp_path: Path) -> None:
    claims = claims_of(tmp_path, transfer={"cifar100": noisy(FLAT, 0.01)})
    assert row(claims, "C2", "best_gain")["verdict"] in {"undetermined", "fails"}
    rng = np.random.default_rng(0)
    for _ in range(20):
        curve = {e: 0.85 + rng.normal(0, 0.01, size=3) for e in EPS}
        gain, _ = check_inverted_u(curve)
        assert gain["verdict"] in {"undetermined", "fails"}, curve


def test_transfer_that_falls_below_eps_zero_everywhere_fails() -> None:
    curve = {e: m + np.array([-0.005, 0.0, 0.005]) for e, m in FALLING.items()}
    gain, _ = check_inverted_u(curve)
    assert gain["value"] < 0 and gain["ci_high"] < 0
    assert gain["verdict"] == "fails"


def test_two_eps_values_leave_the_inverted_u_undetermined() -> None:
    curve = {0.0: np.array([0.7, 0.71, 0.72]), 0.5: np.array([0.9, 0.91, 0.92])}
    gain, _ = check_inverted_u(curve)
    assert gain["verdict"] == "undetermined" and "3 eps" in str(gain["note"])


def test_a_single_seed_leaves_every_claim_undetermined(tmp_path: Path) -> None:
    claims = claims_of(
        tmp_path,
        seeds=(0,),
        clean=noisy(FALLING, 0.0),
        transfer={t: noisy(INVERTED_U, 0.0) for t in ("a", "b", "c", "d", "e")},
        raw_pixels={t: 0.9 for t in ("a", "b", "c", "d", "e")},
        input_trace=noisy({0.0: 100.0, 0.25: 50.0, 0.5: 20.0, 1.0: 5.0}, 0.0),
        weight_trace=noisy({0.0: 100.0, 0.25: 50.0, 0.5: 20.0, 1.0: 5.0}, 0.0),
        inversion={"plain": (noisy({e: 10 + 10 * e for e in EPS}, 0.0), noisy(RISING, 0.0))},
    )
    assert set(claims["claim"]) == {"C1", "C2", "C3", "C4", "C5", "C6"}
    assert (claims["verdict"] == "undetermined").all()
    assert (claims["n_seeds"] == 1).all()
    assert claims[claims["claim"] == "C1"]["ci_low"].isna().all()


@pytest.mark.parametrize(("means", "verdict"), [(FALLING, "holds"), (RISING, "fails")])
def test_c1_source_accuracy_trend(tmp_path: Path, means: dict[float, float], verdict: str) -> None:
    r = row(claims_of(tmp_path, clean=noisy(means, 0.005)), "C1")
    assert r["statistic"] == "delta_test_acc_clean"
    assert r["value"] == pytest.approx(means[1.0] - means[0.0])
    assert r["at_eps"] == 1.0 and r["verdict"] == verdict


@pytest.mark.parametrize(("scale", "verdict"), [(1.0, "holds"), (-1.0, "fails")])
def test_c4_c5_fisher_traces_trend(tmp_path: Path, scale: float, verdict: str) -> None:
    decreasing = {0.0: 100.0, 0.25: 60.0, 0.5: 30.0, 1.0: 10.0}
    planted = decreasing if scale > 0 else {e: 110.0 - v for e, v in decreasing.items()}
    claims = claims_of(
        tmp_path,
        input_trace=noisy(planted, 1.0),
        weight_trace=noisy({e: 3 * v for e, v in planted.items()}, 2.0),
    )
    c4, c5 = row(claims, "C4"), row(claims, "C5")
    assert c4["statistic"] == "ratio_input_trace" and c4["setting"] == "sigma=1"
    assert c5["statistic"] == "ratio_weight_trace" and c5["setting"] == "weight_fisher=true"
    assert c4["verdict"] == verdict and c5["verdict"] == verdict

    def geometric(e: float, offsets: float) -> float:
        return float(np.exp(np.mean([np.log(planted[e] + offsets * n) for n in (-1, 0, 1)])))

    # The ratio of geometric means over seeds, largest eps over smallest.
    assert c4["value"] == pytest.approx(geometric(1.0, 1.0) / geometric(0.0, 1.0))
    assert c5["value"] == pytest.approx(geometric(1.0, 2 / 3) / geometric(0.0, 2 / 3))
    assert "tested on the log scale" in c4["note"]


def test_a_33_fold_fall_with_two_seeds_is_decided_as_a_ratio_not_as_a_difference() -> None:
    # The fashion study's input Fisher: 98.6 -> 3.0 with two seeds each, spread growing with size.
    curve = {0.0: np.array([80.0, 117.0]), 1.0: np.array([2.5, 3.5])}
    linear = check_trend(curve, -1)
    assert linear["verdict"] == "undetermined" and linear["ci_low"] < 0 < linear["ci_high"]
    ratio = check_trend(curve, -1, log=True)
    assert ratio["verdict"] == "holds" and ratio["ci_high"] < 1
    assert ratio["value"] == pytest.approx(np.sqrt(2.5 * 3.5) / np.sqrt(80.0 * 117.0))
    assert ratio["ci_low"] < ratio["value"] < ratio["ci_high"]
    # A rise on the log scale fails, and a value <= 0 falls back to the difference.
    assert check_trend({0.0: curve[1.0], 1.0: curve[0.0]}, -1, log=True)["verdict"] == "fails"
    zero = check_trend({0.0: np.array([1.9, 2.0]), 1.0: np.array([0.0, 0.1])}, -1, log=True)
    assert "cannot be logged" in str(zero["note"]) and zero["verdict"] == "holds"


def test_an_undetermined_claim_says_how_many_seeds_would_decide_it() -> None:
    from analysis.stats import seeds_to_decide

    curve = {0.0: np.array([0.80, 0.84]), 1.0: np.array([0.76, 0.78])}
    r = check_trend(curve, -1)
    assert r["verdict"] == "undetermined"
    needed = r["seeds_needed"]
    assert needed == seeds_to_decide(curve[1.0], curve[0.0]) and 2 < float(needed) < 50
    # At that many seeds, with the observed means and spreads, the verdict is reached.
    rng = np.random.default_rng(0)
    n = int(needed)
    decided = 0
    for _ in range(400):
        draw = {e: rng.normal(v.mean(), v.std(ddof=1), n) for e, v in curve.items()}
        decided += check_trend(draw, -1)["verdict"] != "undetermined"
    assert decided / 400 >= 0.7
    # A decided row and one with no spread to go on give none.
    assert np.isnan(float(check_trend(FIXED_FALL, -1)["seeds_needed"]))
    assert np.isnan(seeds_to_decide([1.0], [2.0, 3.0]))


FIXED_FALL = {0.0: np.array([0.9, 0.91, 0.92]), 1.0: np.array([0.5, 0.51, 0.52])}


def test_the_power_of_a_large_effect_rises_with_the_seeds_and_never_reads_nan() -> None:
    from analysis.stats import MAX_SEEDS, seeds_to_decide, welch_power

    # The demo's plain PSNR at eps 1 and 0 (3 seeds): scipy's noncentral t gives NaN in the
    # far tail from about 54 seeds on, which once sent the search to 439 seeds.
    a, b = [20.59, 16.12, 13.62], [13.20, 10.66, 12.53]
    diff, sd_a, sd_b = np.mean(a) - np.mean(b), np.std(a, ddof=1), np.std(b, ddof=1)
    powers = [welch_power(diff, sd_a, sd_b, n, 0.95) for n in range(2, MAX_SEEDS + 1)]
    assert all(0.0 <= p <= 1.0 for p in powers)
    assert all(p <= q + 1e-12 for p, q in itertools.pairwise(powers))
    first = next(n for n, p in zip(range(2, MAX_SEEDS + 1), powers, strict=False) if p >= 0.8)
    assert seeds_to_decide(a, b) == first and 5 <= first <= 10
    # The sign of the difference does not change the power.
    assert seeds_to_decide(b, a) == first


def test_welch_power_matches_simulated_welch_intervals() -> None:
    from scipy import stats

    from analysis.stats import welch_power

    rng = np.random.default_rng(1)
    draws, n = 3000, 6
    hits = 0
    for _ in range(draws):
        a, b = rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.5, n)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        hits += ci.low > 0 or ci.high < 0
    # The noncentral t with the true spreads' Welch df; simulated: 0.222 (3 standard errors).
    assert welch_power(1.0, 1.0, 1.5, n, 0.95) == pytest.approx(hits / draws, abs=0.025)


def test_fisher_claims_name_the_random_init_network_as_their_reference(tmp_path: Path) -> None:
    planted = {0.0: 100.0, 0.25: 60.0, 0.5: 30.0, 1.0: 10.0}
    claims = claims_of(
        tmp_path,
        input_trace=noisy(planted, 1.0),
        weight_trace=noisy(planted, 1.0),
        fisher_random_init=(200.0, 50.0),
    )
    c4, c5 = row(claims, "C4"), row(claims, "C5")
    assert c4["reference"] == "random init 200" and c5["reference"] == "random init 50"
    assert c4["versus_reference"] == "x0.5 at eps=0, x0.05 at eps=1"
    assert c5["versus_reference"] == "x2 at eps=0, x0.2 at eps=1"
    # The random-init rows (no eps) are references, never a point of the curve.
    assert (c4["n_eps"], c4["n_seeds"]) == (4, 3)


def test_c6_inversion_quality_per_variant_with_plain_as_headline(tmp_path: Path) -> None:
    psnr = noisy({0.0: 12.0, 0.25: 14.0, 0.5: 16.0, 1.0: 18.0}, 0.2)
    claims = claims_of(
        tmp_path,
        inversion={
            "plain": (psnr, noisy(RISING, 0.005)),
            "tv": (noisy(FLAT, 0.5), noisy(FALLING, 0.005)),
        },
    )
    plain = row(claims, "C6", "delta_psnr", setting="variant=plain")
    assert plain["headline"] and plain["verdict"] == "holds"
    assert plain["value"] == pytest.approx(6.0)
    assert row(claims, "C6", "delta_ssim", setting="variant=plain")["verdict"] == "holds"
    tv_ssim = row(claims, "C6", "delta_ssim", setting="variant=tv")
    assert not tv_ssim["headline"] and tv_ssim["verdict"] == "fails"
    assert row(claims, "C6", "delta_psnr", setting="variant=tv")["verdict"] == "undetermined"


def test_c6_below_the_no_information_line_is_undetermined_whatever_the_trend(
    tmp_path: Path,
) -> None:
    # PSNR falls 7.2 -> 6.6 dB with eps, every value below the mean image's 9 dB.
    falling = noisy({0.0: 7.2, 0.25: 7.0, 0.5: 6.8, 1.0: 6.6}, 0.02)
    claims = claims_of(
        tmp_path, inversion={"plain": (falling, noisy(FALLING, 0.005))}, mean_image=(9.0, 0.99)
    )
    plain = row(claims, "C6", "delta_psnr", setting="variant=plain")
    assert (
        check_trend({0.0: np.array([7.18, 7.2, 7.22]), 1.0: np.array([6.58, 6.6, 6.62])}, 1)[
            "verdict"
        ]
        == "fails"
    )
    assert plain["verdict"] == "undetermined"
    assert "no eps beats the no-information line (mean image 9)" in plain["note"]
    assert plain["reference"] == "mean image 9" and plain["versus_reference"].startswith("below")


def test_c6_above_the_no_information_line_keeps_its_trend_verdict(tmp_path: Path) -> None:
    psnr = noisy({0.0: 12.0, 0.25: 14.0, 0.5: 16.0, 1.0: 18.0}, 0.2)
    claims = claims_of(
        tmp_path, inversion={"plain": (psnr, noisy(RISING, 0.005))}, mean_image=(13.0, 0.5)
    )
    plain = row(claims, "C6", "delta_psnr", setting="variant=plain")
    assert plain["verdict"] == "holds"
    assert "beats the no-information line (mean image 13) at eps=0.25, 0.5, 1" in plain["note"]
    assert plain["versus_reference"] == "above the mean image at eps=1"


def test_c2_says_when_the_best_eps_stays_below_raw_pixels(tmp_path: Path) -> None:
    claims = claims_of(
        tmp_path,
        transfer={"near": noisy(INVERTED_U, 0.005), "far": noisy(INVERTED_U, 0.005)},
        raw_pixels={"near": 0.95, "far": 0.70},
        random_init={"near": 0.60, "far": 0.60},
    )
    near = row(claims, "C2", "best_gain", target="near")
    assert near["verdict"] == "holds"
    assert near["reference"] == "raw pixels 0.95; random init 0.6"
    assert near["versus_reference"] == "below raw pixels; above random init"
    assert "stays below raw pixels (0.95)" in near["note"]
    far = row(claims, "C2", "best_gain", target="far")
    assert far["versus_reference"] == "above raw pixels; above random init"
    assert "below raw pixels" not in far["note"]


def far_gains_more(near_to_far: list[str], reverse: bool = False) -> dict[str, object]:
    """Targets at growing distance (raw pixels 0.9, eps=0 probe falling) whose inverted-U gain
    grows with the distance (or shrinks, with reverse)."""
    transfer, raw = {}, {}
    k = len(near_to_far)
    for i, target in enumerate(near_to_far):
        base = 0.88 - 0.04 * i
        gain = 0.01 + 0.02 * (k - 1 - i if reverse else i)
        curve = {0.0: base, 0.25: base + gain / 2, 0.5: base + gain, 1.0: base + gain / 3}
        transfer[target] = noisy(curve, 0.002)
        raw[target] = 0.9
    return {"transfer": transfer, "raw_pixels": raw}


def test_c3_far_targets_gaining_more_gives_a_positive_correlation(tmp_path: Path) -> None:
    targets = ["near", "mid1", "mid2", "mid3", "far"]
    r = row(claims_of(tmp_path, **far_gains_more(targets)), "C3")
    assert r["statistic"] == "spearman(gain, distance)"
    assert r["value"] == pytest.approx(1.0)
    assert r["ci_low"] > 0
    assert r["verdict"] == "holds"
    assert "permutation p = 0.00833" in r["note"]  # 1/5!


def test_c3_near_targets_gaining_more_fails(tmp_path: Path) -> None:
    r = row(claims_of(tmp_path, **far_gains_more(list("abcde"), reverse=True)), "C3")
    assert r["value"] == pytest.approx(-1.0) and r["verdict"] == "fails"


def test_c3_three_targets_cannot_reach_significance(tmp_path: Path) -> None:
    r = row(claims_of(tmp_path, **far_gains_more(["a", "b", "c"])), "C3")
    assert r["value"] == pytest.approx(1.0) and r["ci_low"] > 0
    assert r["verdict"] == "undetermined" and "too few targets" in r["note"]


def test_c3_needs_three_targets_with_a_raw_pixel_baseline(tmp_path: Path) -> None:
    study = far_gains_more(list("abcd"))
    study["raw_pixels"] = {"a": 0.9, "b": 0.9}
    r = row(claims_of(tmp_path, **study), "C3")
    assert r["verdict"] == "undetermined"
    assert "needs at least 3 targets" in r["note"] and "c, d" in r["note"]


def test_c3_accepts_given_distances() -> None:
    curves = {
        t: {0.0: np.array([0.8, 0.81]), 0.5: np.array([0.8 + g, 0.81 + g])}
        for t, g in zip("abcde", (0.01, 0.02, 0.03, 0.04, 0.05), strict=True)
    }
    given = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0}
    r = check_distance_gain(curves, {}, given)
    assert r["value"] == pytest.approx(-1.0) and r["verdict"] == "fails"


def test_c3_with_tied_gains_is_undetermined() -> None:
    seeds = np.array([-0.01, 0.0, 0.01])
    curves = {t: {0.0: 0.8 + seeds, 0.5: 0.85 + seeds[::-1]} for t in "abcde"}
    raw = {t: 0.9 - 0.01 * i for i, t in enumerate("abcde")}
    r = check_distance_gain(curves, raw)
    assert np.isnan(r["value"]) and r["verdict"] == "undetermined"
    assert "all tie" in str(r["note"])


def test_spearman_and_exact_permutation_p() -> None:
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))
    assert permutation_p(np.arange(4), np.arange(4)) == pytest.approx((1 / 24, 1.0))
    p_pos, _ = permutation_p(np.arange(10), np.arange(10))
    assert p_pos == pytest.approx(1 / 20001)
    assert np.isnan(permutation_p(np.ones(4), np.arange(4))[0])


def test_spearman_rows_match_spearman_row_by_row() -> None:
    rng = np.random.default_rng(5)
    # Few distinct values: ties within rows, and some constant rows (NaN).
    a = rng.integers(0, 3, size=(200, 5)).astype(float)
    b = rng.integers(0, 4, size=(200, 5)).astype(float)
    a[0] = 1.0
    rows = spearman_rows(a, b)
    expected = np.array([spearman(x, y) for x, y in zip(a, b, strict=True)])
    assert np.isnan(rows[0])
    np.testing.assert_allclose(rows, expected, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_exact_permutation_p_with_ties_counts_every_pairing() -> None:
    # Brute force: Spearman of x against every reordering of y, ties kept in both.
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0])
    y = np.array([0.1, 0.3, 0.2, 0.2, 0.6, 0.5])
    observed = spearman(x, y)
    rhos = np.array([spearman(x, y[list(p)]) for p in itertools.permutations(range(len(y)))])
    p_pos, p_neg = permutation_p(x, y)
    assert p_pos == pytest.approx(np.mean(rhos >= observed - 1e-12))
    assert p_neg == pytest.approx(np.mean(rhos <= observed + 1e-12))
    assert 0 < p_pos < 0.1 < p_neg


def test_check_trend_rules() -> None:
    seeds = np.array([-0.01, 0.0, 0.01])
    assert check_trend({0.0: 0.9 + seeds, 1.0: 0.8 + seeds}, -1)["verdict"] == "holds"
    assert check_trend({0.0: 0.9 + seeds, 1.0: 0.95 + seeds}, -1)["verdict"] == "fails"
    assert check_trend({0.0: 0.9 + seeds, 1.0: 0.9 + seeds}, -1)["verdict"] == "undetermined"
    exactly_flat = {0.0: np.full(2, 0.9), 1.0: np.full(2, 0.9)}
    assert check_trend(exactly_flat, -1)["verdict"] == "fails"  # the CI is [0, 0]
    assert check_trend({0.0: 0.9 + seeds, 1.0: 0.9 + seeds * 5}, -1)["verdict"] == "undetermined"
    assert check_trend({0.0: 0.9 + seeds}, -1)["verdict"] == "undetermined"
    assert check_trend({0.0: 0.8 + seeds, 1.0: 0.9 + seeds}, +1)["verdict"] == "holds"
    not_monotone = check_trend({0.0: 0.9 + seeds, 0.5: 0.95 + seeds, 1.0: 0.8 + seeds}, -1)
    assert "not monotone" in str(not_monotone["note"])


def test_blocks_are_separate_and_markdown_lists_each_claim(tmp_path: Path) -> None:
    claims = claims_of(
        tmp_path,
        sources=("cifar10", "cifar100"),
        clean=noisy(FALLING, 0.005),
        transfer={"pets": noisy(INVERTED_U, 0.005)},
    )
    c1 = claims[claims["claim"] == "C1"]
    assert list(c1["source"]) == ["cifar10", "cifar100"]
    text = format_claims(claims)
    assert "### C1: Source clean accuracy falls" in text
    assert "### C2:" in text and "### C3:" in text
    assert "Headline rows: 2 holds, 0 fails, 0 undetermined." in text
    assert "| cifar100 | resnet18 | l2 | pgd7 | pets | best_gain |" in text
    header = next(line for line in text.splitlines() if line.startswith("| source"))
    assert all(
        line.count("|") == header.count("|") for line in text.splitlines() if line[:2] == "| "
    )


def test_empty_tables_give_no_claims(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    claims = check_claims(load_tables(tmp_path))
    assert claims.empty
    assert "no claim can be checked" in format_claims(claims)
