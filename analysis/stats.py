"""Array-level statistics behind the fits: polynomial least squares, the U-curve optimum with delta-method and
parametric-bootstrap intervals, log-scale laws, Welch comparisons. No DataFrames and no files here, so that each
routine can be proven on draws from a known law (tests/analysis/test_fits.py).

Every interval is two-sided at ``level`` and reported as ``[low, high]``; an interval that cannot be computed (too
few points, zero variance) is ``None``, never a made-up number.
"""

from __future__ import annotations

import math

import numpy as np
import statsmodels.api as sm
from scipy import stats as sps

LEVEL = 0.95


def t_quantile(level: float, df: float) -> float:
    """The two-sided ``level`` critical value of Student's t with ``df`` degrees of freedom."""
    return float(sps.t.ppf(0.5 + level / 2, df))


def poly_fit(x, y, degree: int, weights=None):
    """Least squares of y on 1, x, ..., x^degree: WLS when ``weights`` (1/variance) are given, else OLS."""
    X = np.vander(np.asarray(x, float), degree + 1, increasing=True)
    y = np.asarray(y, float)
    if weights is None:
        return sm.OLS(y, X).fit()
    return sm.WLS(y, X, weights=np.asarray(weights, float)).fit()


def coefficients(res, names: list[str], level: float = LEVEL) -> dict:
    """Estimate, standard error, t-interval and two-sided p of each coefficient of a statsmodels result."""
    tq = t_quantile(level, res.df_resid)
    out = {}
    for name, est, se, p in zip(names, res.params, res.bse, res.pvalues):
        out[name] = {"estimate": float(est), "se": float(se), "ci": [float(est - tq * se), float(est + tq * se)],
                     "p": float(p)}
    return out


def fit_quality(res) -> dict:
    """n, residual df, R², AIC, BIC and log-likelihood of a statsmodels result."""
    return {"n": int(res.nobs), "df_resid": float(res.df_resid), "r2": float(res.rsquared), "aic": float(res.aic),
            "bic": float(res.bic), "llf": float(res.llf)}


def mean_interval(values, level: float = LEVEL) -> dict:
    """Mean of seed replicates with its t-interval (None below two replicates)."""
    v = np.asarray(values, float)
    n = len(v)
    mean = float(v.mean()) if n else None
    sd = float(v.std(ddof=1)) if n > 1 else None
    se = sd / math.sqrt(n) if sd is not None else None
    ci = None
    if se is not None:
        tq = t_quantile(level, n - 1)
        ci = [mean - tq * se, mean + tq * se]
    return {"n": n, "mean": mean, "sd": sd, "se": se, "ci": ci}


def welch(m1, s1, n1, m2, s2, n2, level: float = LEVEL) -> dict:
    """Welch's unequal-variance comparison of two means from summary statistics: difference m1 - m2.

    Interval and p are None when either side has fewer than two replicates or both have zero spread, because
    seed-to-seed noise is then unknown and any interval would be invented.
    """
    out = {"difference": float(m1 - m2), "se": None, "df": None, "ci": None, "p": None, "n": [int(n1), int(n2)]}
    if n1 < 2 or n2 < 2 or s1 is None or s2 is None:
        return out
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    if v1 + v2 <= 0:
        return out
    se = math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))  # Welch-Satterthwaite
    tq = t_quantile(level, df)
    d = m1 - m2
    out.update(se=se, df=df, ci=[d - tq * se, d + tq * se], p=float(2 * sps.t.sf(abs(d) / se, df)))
    return out


# --- the U-curve --------------------------------------------------------------------------------------------------


def quadratic_optimum(x, y, weights=None, level: float = LEVEL, n_boot: int = 2000, seed: int = 0,
                      ref: float = 1.0) -> dict:
    """Fit y = a + b x + c x² and locate its minimum x* = -b / (2c), with two intervals for x*.

    * delta method: se(x*)² = g' Σ g with g = (-1/(2c), b/(2c²)), a t-interval on the residual df;
    * parametric bootstrap: responses simulated from the fitted law with Gaussian errors of the fitted variance
      (per point 1/weight), the noise scale itself drawn from its χ² distribution so that a fit on few points keeps
      its small-sample uncertainty; the percentile interval of the refitted x*. A draw with c <= 0 has no minimum:
      its x* is ±inf in the direction the near-linear curve falls, which is the limit of -b/(2c) as c -> 0+.

    The optimum is called interior when the curvature is significantly positive (one-sided t-test at 1 - level)
    and both intervals lie inside the sampled x range. ``gap`` is y(ref) - y(x*) = c (ref - x*)², the loss given
    up by staying at ``ref`` (rho = 1: pure MoE), with the same two kinds of interval.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    res = poly_fit(x, y, 2, weights)
    if res.df_resid < 1:
        raise ValueError(f"a quadratic needs at least 4 points, got {len(x)}")
    a, b, c = (np.float64(v) for v in res.params)  # numpy division: c == 0 gives inf, not an exception
    cov = np.asarray(res.cov_params())
    df = float(res.df_resid)
    tq = t_quantile(level, df)
    alpha = 1 - level
    lo, hi = float(x.min()), float(x.max())

    with np.errstate(divide="ignore", invalid="ignore"):
        x_star = float(-b / (2 * c))
        g = np.array([0.0, -1 / (2 * c), b / (2 * c * c)])
        se_star = float(np.sqrt(g @ cov @ g))
    ci_delta = [x_star - tq * se_star, x_star + tq * se_star]
    se_c = float(math.sqrt(cov[2, 2]))
    with np.errstate(divide="ignore", invalid="ignore"):
        p_convex = float(sps.t.sf(c / se_c, df))
        k = 2 * c * ref + b
        gap = float(k * k / (4 * c))
        gg = np.array([0.0, k / (2 * c), k * (2 * c * ref - b) / (4 * c * c)])
        se_gap = float(np.sqrt(gg @ cov @ gg))

    betas = parametric_bootstrap(res, x, weights, n_boot, seed)
    bb, cc = betas[:, 1], betas[:, 2]
    convex = cc > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(convex, -bb / (2 * cc), np.sign(-bb) * np.inf)
        gaps = np.where(convex, (2 * cc * ref + bb) ** 2 / (4 * cc), np.inf)
    ci_boot = _percentile_interval(xs, alpha)
    gap_boot = _percentile_interval(gaps, alpha)

    inside = all(v is not None and lo <= v <= hi for v in (*ci_delta, *ci_boot))
    a, b, c = float(a), float(b), float(c)
    return {
        "params": [a, b, c], "cov": cov.tolist(), "df_resid": df, "scale": float(res.scale),
        "coefficients": coefficients(res, ["a", "b", "c"], level),
        "quality": fit_quality(res),
        "x_range": [lo, hi],
        "optimum": {"estimate": x_star, "se_delta": se_star, "ci_delta": ci_delta, "ci_bootstrap": ci_boot,
                    "bootstrap_draws": int(n_boot), "bootstrap_share_convex": float(convex.mean())},
        "curvature": {"estimate": c, "se": se_c, "p_positive": p_convex},
        "interior": bool(c > 0 and p_convex < alpha and inside),
        "loss_at_optimum": a - b * b / (4 * c) if c else math.nan,
        "gap": {"ref": ref, "estimate": gap, "se_delta": se_gap, "ci_delta": [gap - tq * se_gap, gap + tq * se_gap],
                "ci_bootstrap": gap_boot, "extrapolated": not lo <= ref <= hi},
    }


def parametric_bootstrap(res, x, weights, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, 3) quadratic coefficients refitted to responses simulated from ``res`` (see quadratic_optimum).

    The refit is one matrix product: for a fixed design, least squares is linear in y.
    """
    rng = np.random.default_rng(seed)
    X = np.vander(np.asarray(x, float), 3, increasing=True)
    w = np.ones(len(X)) if weights is None else np.asarray(weights, float)
    A = np.linalg.solve(X.T @ (X * w[:, None]), (X * w[:, None]).T)  # beta = A @ y
    df = res.df_resid
    scale = np.sqrt(res.scale * df / rng.chisquare(df, size=(n_boot, 1)))
    eps = rng.standard_normal((n_boot, len(X))) * scale / np.sqrt(w)
    return np.asarray(res.params)[None, :] + eps @ A.T


def _percentile_interval(draws: np.ndarray, alpha: float) -> list:
    # inverted_cdf picks actual draws, so an infinite tail stays infinite instead of becoming nan by interpolation
    q = np.quantile(draws, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return [float(v) if np.isfinite(v) else None for v in q]


def linear_combination(params, cov, df: float, v, level: float = LEVEL) -> dict:
    """v · beta of fitted coefficients with its standard error and t-interval."""
    v = np.asarray(v, float)
    est = float(v @ np.asarray(params))
    se = float(math.sqrt(v @ np.asarray(cov) @ v))
    tq = t_quantile(level, df)
    return {"estimate": est, "se": se, "ci": [est - tq * se, est + tq * se]}


def quadratic_contrast(params, cov, df: float, x1: float, x2: float, level: float = LEVEL) -> dict:
    """y(x1) - y(x2) of a fitted quadratic, a linear contrast of its coefficients, with its t-interval."""
    return {"x1": x1, "x2": x2, **linear_combination(params, cov, df, [0.0, x1 - x2, x1 * x1 - x2 * x2], level)}


def quadratic_slope(params, cov, df: float, x: float, level: float = LEVEL) -> dict:
    """dy/dx = b + 2 c x of a fitted quadratic at ``x``, with its t-interval."""
    return {"x": x, **linear_combination(params, cov, df, [0.0, 1.0, 2.0 * x], level)}


def quadratic_band(params, cov, df: float, grid, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fitted quadratic on ``grid`` with the pointwise t-band of its mean (for figures)."""
    X = np.vander(np.asarray(grid, float), 3, increasing=True)
    mean = X @ np.asarray(params)
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, np.asarray(cov), X))
    tq = t_quantile(level, df)
    return mean, mean - tq * se, mean + tq * se


def cubic_alternative(x, y, weights=None, level: float = LEVEL) -> dict:
    """The more flexible comparison model y = a + b x + c x² + d x³ and the location of its minimum in range."""
    res = poly_fit(x, y, 3, weights)
    lo, hi = float(np.min(x)), float(np.max(x))
    grid = np.linspace(lo, hi, 401)
    curve = np.vander(grid, 4, increasing=True) @ res.params
    return {"coefficients": coefficients(res, ["a", "b", "c", "d"], level), "quality": fit_quality(res),
            "argmin_in_range": float(grid[int(np.argmin(curve))])}


# --- log-scale laws -----------------------------------------------------------------------------------------------


def power_law(s, loss, level: float = LEVEL) -> dict:
    """L = a * S^(-alpha) by OLS of log L on log S; alpha with its t-interval.

    ``aic_loss_scale`` adds the log-transform's Jacobian so that it can be set against the log-linear fit's AIC,
    which is computed on the loss itself.
    """
    s = np.asarray(s, float)
    loss = np.asarray(loss, float)
    res = poly_fit(np.log(s), np.log(loss), 1)
    co = coefficients(res, ["log_a", "slope"], level)
    slope = co.pop("slope")
    co["alpha"] = {"estimate": -slope["estimate"], "se": slope["se"], "ci": [-slope["ci"][1], -slope["ci"][0]],
                   "p": slope["p"]}
    la = co["log_a"]
    co["a"] = {"estimate": math.exp(la["estimate"]), "ci": [math.exp(la["ci"][0]), math.exp(la["ci"][1])]}
    q = fit_quality(res)
    q["aic_loss_scale"] = -2 * (res.llf - float(np.log(loss).sum())) + 2 * (res.df_model + 1)
    return {"formula": "log(val_loss) = log(a) - alpha * log(slots)", "coefficients": co, "quality": q,
            "params": [float(v) for v in res.params]}


def log_linear(s, loss, level: float = LEVEL) -> dict:
    """The paper's form L = a + b log10 S (b: loss change per decade of slots), and a curvature check.

    ``curvature`` is the coefficient of (log10 S)² in a second fit: an interval excluding zero says the points
    bend away from a straight line in log S.
    """
    s = np.asarray(s, float)
    x = np.log10(s)
    res = poly_fit(x, loss, 1)
    q = fit_quality(res)
    q["aic_loss_scale"] = q["aic"]
    out = {"formula": "val_loss = a + b * log10(slots)", "coefficients": coefficients(res, ["a", "b"], level),
           "quality": q, "params": [float(v) for v in res.params], "curvature": None}
    if len(np.unique(x)) >= 4 and len(x) >= 5:
        curved = poly_fit(x, loss, 2)
        out["curvature"] = coefficients(curved, ["a", "b", "c"], level)["c"]
    return out


def two_group_lines(x, y, is_second, level: float = LEVEL) -> dict:
    """y = a + b x + d*(a2 + b2 x) for two groups (d = 1 for the second): a2 is the second group's level minus the
    first's at x = 0, b2 the slope difference; both with t-intervals from the pooled fit."""
    x = np.asarray(x, float)
    d = np.asarray(is_second, float)
    X = np.column_stack([np.ones_like(x), x, d, d * x])
    res = sm.OLS(np.asarray(y, float), X).fit()
    co = coefficients(res, ["a", "b", "level_difference", "slope_difference"], level)
    return {"level_difference": co["level_difference"], "slope_difference": co["slope_difference"],
            "quality": fit_quality(res)}
