"""What the paper figures show, read back from the matplotlib figures drawn from synthetic records: an optimum
marked only where the fit shows one, every band named as an interval, losses in nats, readable ablation labels."""

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest

from analysis import data, fits, plotting, stats
from analysis.simulate import (quadratic_law, simulate_ablation, simulate_placement, simulate_power_law,
                               simulate_u_curve)

# the ablation sweep's own names (sweeps/specs/ablation.yaml), with losses spread like the recorded sweep's
# (results/ablation): with two seeds and this noise the intervals span about -0.1 to +0.1, where matplotlib's
# default ticks come every 0.025 and their signed labels run into each other
SPEC_ABLATIONS = {"reference": 1.30, "no_compression": 1.303, "no_gate": 1.295, "no_conv": 1.301,
                  "plus_4gram": 1.299, "no_multi_branch": 1.305, "single_head": 1.302, "single_row_table": 1.365,
                  "frozen_random_table": 1.322, "bigram_hash": 1.31, "signed_sqrt_gate": 1.302,
                  "default_conv_init": 1.296, "row_sparse_adam": 1.308, "no_memory": 1.357}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def allocation():
    """Two budgets: a U with its minimum mid-range, and a convex curve whose fitted minimum lies inside the sampled
    range near its low end, where too many bootstrap resamples put it at the range end to call it interior."""
    laws = {"1e20": quadratic_law(1.8, 0.6, 0.3), "3e20": quadratic_law(1.7, 0.08, 0.3)}
    runs = simulate_u_curve(np.random.default_rng(0), laws, noise=0.01)
    df = data.frame_from_records(runs)
    return df, fits.fit_all(df, n_boot=200)


def _rho_star_artists(ax) -> list:
    return [a for a in ax.get_children() if a.get_gid() == plotting.RHO_STAR_GID]


def _overlapping_tick_labels(axis) -> list[tuple[str, str]]:
    """Pairs of drawn tick labels whose boxes overlap; call it under the figures' style, as tick density and label
    size are read from the rc parameters whenever the ticks are laid out."""
    lo, hi = sorted(axis.get_view_interval())
    at = 0 if axis.axis_name == "x" else 1
    boxes = [(t.get_text(), t.get_window_extent()) for t in axis.get_ticklabels()
             if t.get_text() and lo <= t.get_position()[at] <= hi]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def test_u_curve_marks_rho_star_only_in_the_panel_whose_fit_shows_an_interior_optimum(allocation):
    df, f = allocation
    u, edge = f["u_curve"]["budgets"]["1e20"], f["u_curve"]["budgets"]["3e20"]
    assert u["optimum"]["interior_shown"] and not edge["optimum"]["interior_shown"]
    lo, hi = edge["rho_range"]
    assert edge["curvature"]["estimate"] > 0 and lo < edge["rho_star"]["estimate"] < hi  # what once drew a line
    fig = plotting.u_curve_figure(df, f)
    ax_u, ax_edge = fig.axes
    assert len(_rho_star_artists(ax_u)) == 2  # the line and its interval
    assert _rho_star_artists(ax_edge) == []
    assert "no interior optimum shown" in [t.get_text() for t in ax_edge.texts]
    assert [t.get_text() for t in ax_u.texts] == []


def test_u_curve_legend_names_the_fit_band_and_the_rho_star_band_as_confidence_intervals(allocation):
    df, f = allocation
    legend = [t.get_text() for t in plotting.u_curve_figure(df, f).legends[0].get_texts()]
    assert "quadratic fit, 95% CI of the mean" in legend
    assert r"$\rho^*$ 95% CI (bootstrap)" in legend


def test_u_curve_marks_rho_star_at_the_minimum_of_the_law_chosen_by_aicc_not_of_the_quadratic():
    def skewed(rho):  # the paper's shape: a gentle left arm, a steep right one, the minimum at 0.75
        d = np.asarray(rho, float) - 0.75
        return 1.8 + np.where(d < 0, 0.4, 4.0) * d * d

    runs = simulate_u_curve(np.random.default_rng(0), {"1e20": skewed}, rhos=np.round(np.linspace(0.2, 1, 9), 3),
                            seeds=2, noise=0.002)
    df = data.frame_from_records(runs)
    f = fits.fit_all(df, n_boot=200)
    u = f["u_curve"]["budgets"]["1e20"]
    assert u["optimum"]["model"] == "asymmetric" and u["optimum"]["interior_shown"]
    assert abs(u["rho_star"]["estimate"] - u["optimum"]["estimate"]) > 0.1  # the quadratic's minimum is elsewhere
    ax = plotting.u_curve_figure(df, f).axes[0]
    line = next(a for a in _rho_star_artists(ax) if a in ax.lines)
    assert line.get_xdata()[0] == u["optimum"]["estimate"]
    assert "asymmetric law (lowest AICc)" in [a.get_label() for a in ax.lines]


def test_u_curve_band_is_drawn_at_the_fits_level(allocation):
    df, _ = allocation
    f = fits.fit_all(df, level=0.8, n_boot=200)
    ax = plotting.u_curve_figure(df, f).axes[0]
    band = next(c for c in ax.collections if c.get_label() == "quadratic fit, 80% CI of the mean")
    u = f["u_curve"]["budgets"]["1e20"]
    grid = np.linspace(*u["rho_range"], 200)
    _, band_lo, band_hi = stats.quadratic_band(u["params"], u["cov"], u["df_resid"], grid, 0.8)
    drawn = band.get_paths()[0].vertices[:, 1]
    assert drawn.min() == pytest.approx(band_lo.min()) and drawn.max() == pytest.approx(band_hi.max())


def test_every_loss_axis_states_nats_per_token():
    rng = np.random.default_rng(0)
    runs = (simulate_u_curve(rng, seeds=2) + simulate_power_law(rng, baseline=1.808)
            + simulate_placement(rng, seeds=2) + simulate_ablation(rng))
    df = data.frame_from_records(runs)
    f = fits.fit_all(df, n_boot=100)
    loss_axes = {"u_curve": plotting.u_curve_figure(df, f).axes[0].get_ylabel(),
                 "memory_scaling": plotting.memory_scaling_figure(df, f).axes[0].get_ylabel(),
                 "placement": plotting.placement_figure(df, f).axes[0].get_ylabel(),
                 "ablation": plotting.ablation_figure(f).axes[0].get_xlabel()}
    assert {name: "nats/token" in label for name, label in loss_axes.items()} == dict.fromkeys(loss_axes, True)


@pytest.fixture(scope="module")
def ablation_fits():
    runs = simulate_ablation(np.random.default_rng(0), {**SPEC_ABLATIONS, "some_new_switch": 1.3}, seeds=2,
                             noise=0.006)
    return fits.fit_all(data.frame_from_records(runs))


def test_ablation_ticks_are_human_labels_not_config_keys(ablation_fits):
    ax = plotting.ablation_figure(ablation_fits).axes[0]
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_yticklabels()]
    assert len(ticks) == len(SPEC_ABLATIONS)  # every switch but the reference, plus the unknown one
    assert not [t for t in ticks if "_" in t]
    for label in ("no gate", "single hash head (K=1)", "no short conv", "no memory (MoE only)", "some new switch"):
        assert label in ticks
    assert "minus reference (nats/token)" in ax.get_xlabel()


def test_ablation_tick_labels_do_not_overlap(ablation_fits):
    fig = plotting.ablation_figure(ablation_fits)
    with plt.rc_context(plotting.style()):
        fig.canvas.draw()
        assert _overlapping_tick_labels(fig.axes[0].xaxis) == []
        assert _overlapping_tick_labels(fig.axes[0].yaxis) == []


def test_ablation_axis_claims_an_interval_only_where_seeds_give_one():
    one_seed = fits.fit_all(data.frame_from_records(simulate_ablation(np.random.default_rng(0), seeds=1)))
    two_seeds = fits.fit_all(data.frame_from_records(simulate_ablation(np.random.default_rng(0), seeds=2)))
    one_seed_label = plotting.ablation_figure(one_seed).axes[0].get_xlabel()
    assert "CI" not in one_seed_label and "no interval" in one_seed_label
    assert "Welch 95% CI" in plotting.ablation_figure(two_seeds).axes[0].get_xlabel()
