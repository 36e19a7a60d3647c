"""Array-level statistics behind the fits: polynomial least squares, the U-curve optimum with delta-method and
parametric-bootstrap intervals, the U-curve law chosen by AICc with a seed bootstrap of its optimum, log-scale
laws, Welch comparisons. No DataFrames and no files here, so that each
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
    ci_boot = percentile_interval(xs, alpha)
    gap_boot = percentile_interval(gaps, alpha)

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


def percentile_interval(draws: np.ndarray, alpha: float) -> list:
    """The two-sided percentile interval of bootstrap draws at 1 - alpha (an infinite end is None)."""
    # inverted_cdf picks actual draws, so an infinite tail stays infinite instead of becoming nan by interpolation
    q = np.quantile(draws, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return [float(v) if np.isfinite(v) else None for v in q]


def quadratic_band(params, cov, df: float, grid, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fitted quadratic on ``grid`` with the pointwise t-band of its mean (for figures)."""
    X = np.vander(np.asarray(grid, float), 3, increasing=True)
    mean = X @ np.asarray(params)
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, np.asarray(cov), X))
    tq = t_quantile(level, df)
    return mean, mean - tq * se, mean + tq * se


# --- the U-curve: a law chosen among three, and a seed bootstrap of its optimum -----------------------------------
#
# Three laws of loss(rho) compete by AICc, fitted to the runs themselves (one observation per run, so that the
# scatter of seeds at a rho point sets the noise scale a misfit has to beat; WLS weights 1 / that point's seed
# variance when every point has seeds, as in the quadratic fit above):
#
#   quadratic    a + b rho + c rho^2           the second-order expansion of a smooth U about its optimum; symmetric
#   cubic        a + b rho + c rho^2 + d rho^3  the next term of that expansion: a smooth skew
#   asymmetric   m + kl (rho - r)^2 left of r, m + kr (rho - r)^2 right of r
#
# The asymmetric law is the same expansion with its own curvature on each side of the optimum. The paper reads the
# two arms as two mechanisms (too few experts on the left, no memory on the right; PAPER.md section 1), and its
# curve is back at the pure-MoE loss near rho = 0.4 with its minimum near 0.8: curvatures about 4x apart, whose
# minimum a quadratic puts near 0.7. The optimum r is a parameter, so the minimum needs no root finding; the curve
# and its slope are continuous at r, so r is identified by points on both of its sides; and for fixed r the law is
# linear in (m, kl, kr), so r is profiled over a grid of the sampled range: no start values, no local optimiser
# to get stuck, and the same code fits one data set or a thousand resamples at once. Both curvatures are held
# >= 0 (a U has convex arms). It has four mean parameters, like the cubic, so AICc sets the two skewed shapes
# against each other on equal terms. Its known weakness: a curve flat at the bottom with one arm rising
# exponentially pulls r toward the foot of that arm (see tests/analysis/test_fits.py for the shapes it recovers).

U_MODELS = {
    "quadratic": {"formula": "val_loss = a + b*rho + c*rho^2", "params": ("a", "b", "c")},
    "cubic": {"formula": "val_loss = a + b*rho + c*rho^2 + d*rho^3", "params": ("a", "b", "c", "d")},
    "asymmetric": {"formula": "val_loss = m + kl*(rho - r)^2 for rho < r, m + kr*(rho - r)^2 for rho >= r",
                   "params": ("m", "kl", "kr", "r")},
}
PROFILE_POINTS = 101  # grid of r over the sampled range (0.009 apart on [0.1, 1]); a parabola through the best
                      # three grid values then places r between them


def pooled_sd(n, sd) -> float | None:
    """The seed sd pooled over points of ``n`` runs and seed sd ``sd``, each point's variance weighted by its degrees
    of freedom (points with fewer than two runs carry none); None without a point of two or more."""
    n, sd = np.asarray(n, float), np.asarray(sd, float)
    df_i = n - 1
    keep = df_i > 0
    return math.sqrt(float((sd[keep] ** 2 * df_i[keep]).sum() / df_i[keep].sum())) if keep.any() else None


def seed_variances(n, sd) -> np.ndarray | None:
    """Each rho point's seed variance shrunk toward the pooled one; None when a point has one run or none vary.

    The pooled variance weighs twice the median per-point df (a typical point's own variance gets a third of the
    weight): a variance from two or three seeds can be near zero by chance and would hand that point the whole fit.
    """
    n = np.asarray(n, float)
    sd = np.asarray(sd, float)
    if len(n) == 0 or (n < 2).any():
        return None
    df_i = n - 1
    pooled = pooled_sd(n, sd) ** 2
    prior = 2.0 * float(np.median(df_i))
    var = (df_i * sd ** 2 + prior * pooled) / (df_i + prior)
    return var if np.all(np.isfinite(var)) and np.all(var > 0) else None


def u_predict(model: str, params, x) -> np.ndarray:
    """The law ``model`` (a key of U_MODELS) with ``params`` (..., p) at ``x``, broadcast against params[..., 0]."""
    p = np.asarray(params, float)
    x = np.asarray(x, float)
    if model == "asymmetric":
        d = x - p[..., 3]
        return p[..., 0] + np.where(d < 0, p[..., 1], p[..., 2]) * d * d
    return sum(p[..., k] * x ** k for k in range(p.shape[-1]))


def split_design(x, r) -> np.ndarray:
    """The asymmetric law's columns for a fixed r: 1, (x - r)^2 left of r, (x - r)^2 right of r; shape
    (..., n, 3) for x of shape (n,) and r of shape (..., 1). A column is all zero when r is at a range end."""
    d = np.asarray(x, float) - np.asarray(r, float)
    sq = d * d
    return np.stack([np.ones_like(d), np.where(d < 0, sq, 0.0), np.where(d < 0, 0.0, sq)], axis=-1)


def _fit_laws(x, Y, w, lo: float, hi: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each law of U_MODELS fitted to every row of ``Y`` (B, n) by weighted least squares: (params (B, p), RSS (B,)).

    Least squares is linear in y for a fixed design, so B data sets cost one pseudo-inverse per design. Every law
    has a constant term, so the rows are centred first (better conditioned) and the mean added back to it.
    """
    sw = np.sqrt(w)
    shift = Y.mean(axis=1, keepdims=True)
    Yw = (Y - shift) * sw
    out = {}
    for name, degree in (("quadratic", 2), ("cubic", 3)):
        Xw = np.vander(x, degree + 1, increasing=True) * sw[:, None]
        beta = Yw @ np.linalg.pinv(Xw).T
        rss = ((Yw - beta @ Xw.T) ** 2).sum(1)
        beta[:, 0] += shift[:, 0]
        out[name] = (beta, rss)
    grid = np.linspace(lo, hi, PROFILE_POINTS)
    beta, rss = _convex_split_fit(split_design(x, grid[:, None]) * sw[:, None], Yw, paired=False)  # (G, B, ...)
    cols = np.arange(Y.shape[0])
    i = rss.argmin(0)
    j = np.clip(i, 1, PROFILE_POINTS - 2)
    r0, r1, r2 = rss[j - 1, cols], rss[j, cols], rss[j + 1, cols]
    bend = r0 - 2 * r1 + r2
    # vertex of the parabola through the best grid value and its neighbours, half a grid step at most either way
    step = np.divide(0.5 * (r0 - r2), bend, out=np.zeros_like(bend), where=(i == j) & (bend > 0))
    r = grid[i] + step * (grid[1] - grid[0])
    beta_r, rss_r = _convex_split_fit(split_design(x, r[:, None]) * sw[:, None], Yw, paired=True)
    keep = rss_r <= rss[i, cols]  # the refined r, unless the grid point fits better (a kink of the profile)
    params = np.column_stack([np.where(keep[:, None], beta_r, beta[i, cols]), np.where(keep, r, grid[i])])
    params[:, 0] += shift[:, 0]
    # the RSS the normal equations give ranks r well, but is first-order in their rounding: recompute it exactly
    out["asymmetric"] = (params, (w * (Y - u_predict("asymmetric", params[:, None, :], x)) ** 2).sum(1))
    return out


def _convex_split_fit(Xw, Yw, paired: bool):
    """The asymmetric law's least squares with both curvatures kl, kr >= 0, for weighted designs Xw (R, n, 3) (one
    per r): against every row of Yw (B, n), giving coefficients (R, B, 3) and RSS (R, B); or, ``paired``, design i
    against row i only, giving (R, 3) and (R,).

    Both arms convex is what makes the law a U: with a free sign, r could sit at a knee of the curve with a concave
    arm beyond it (measured: on a curve steep on the left and flat on the right, r went to the knee and the minimum
    to the range end). With two bounded coefficients the constrained optimum is the best feasible one of the four
    active sets (both free, either one zero, both zero), each an ordinary least-squares fit, solved here from its
    normal equations (3 x 3 at most: thousands of them cost a few batched matrix products).
    """
    Yt = Yw[:, :, None] if paired else Yw.T                   # (R, n, 1) or (n, B)
    xtx = np.swapaxes(Xw, -1, -2) @ Xw                         # (R, 3, 3)
    xty = np.swapaxes(Xw, -1, -2) @ Yt                         # (R, 3, B'), B' = 1 when paired
    # an arm without points (r at a range end) has an all-zero column: a ridge 1e-12 of the largest diagonal
    # term leaves every other solution as it is and gives that curvature exactly 0 (its X'y is 0)
    ridge = 1e-12 * xtx.diagonal(axis1=-2, axis2=-1).max(-1)[:, None, None]
    yy = (Yw ** 2).sum(-1)[:, None] if paired else (Yw ** 2).sum(-1)
    sets = ([0, 1, 2], [0, 2], [0, 1], [0])
    parts, best_rss, best_set = [], None, None
    for k, cols in enumerate(sets):
        part = np.linalg.inv(xtx[:, cols][:, :, cols] + ridge * np.eye(len(cols))) @ xty[:, cols]  # (R, k, B')
        rss = yy - (xty[:, cols] * part).sum(1)                # RSS = |y|^2 - (X'y).beta for least squares
        convex = (part[:, [i for i, c in enumerate(cols) if c > 0]] >= 0).all(1)
        rss = np.where(convex, rss, np.inf)
        parts.append(part)
        better = rss < best_rss if k else np.ones(rss.shape, bool)
        best_rss = np.where(better, rss, best_rss) if k else rss
        best_set = np.where(better, k, best_set) if k else np.zeros(rss.shape, int)
    beta = np.zeros((3,) + best_rss.shape)                     # (3, R, B')
    for k, (cols, part) in enumerate(zip(sets, parts)):
        for i, c in enumerate(cols):
            beta[c] = np.where(best_set == k, part[:, i], beta[c])
    beta = np.moveaxis(beta, 0, -1)                            # (R, B', 3)
    return (beta[:, 0], best_rss[:, 0]) if paired else (beta, best_rss)


def argmin_in_range(model: str, params: np.ndarray, lo: float, hi: float):
    """Minimiser of each fitted law (rows of ``params``) on [lo, hi], whether it is a minimum strictly inside (else
    a range end: no interior optimum), and the law's value there. Nothing is extrapolated past the range."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if model == "quadratic":
            b, c = params[:, 1], params[:, 2]
            ok, s = c > 0, -b / (2 * c)
        elif model == "cubic":
            b, c, d = params[:, 1], params[:, 2], params[:, 3]
            disc = 4 * c * c - 12 * b * d
            den = 2 * c + np.sqrt(np.maximum(disc, 0.0))
            # the root of b + 2c x + 3d x^2 where the second derivative 2c + 6d x equals sqrt(disc) > 0, written so
            # that it stays exact as d -> 0 (where it becomes the quadratic's -b / 2c)
            ok, s = (disc > 0) & (den != 0), -2 * b / den
        else:
            ok, s = (params[:, 1] > 0) & (params[:, 2] > 0), params[:, 3]
    ok &= (s > lo) & (s < hi)
    n = len(params)
    cand = np.column_stack([np.full(n, lo), np.full(n, hi), np.where(ok, s, lo)])
    vals = u_predict(model, params[:, None, :], cand)
    vals[:, 2] = np.where(ok, vals[:, 2], np.inf)
    k = vals.argmin(1)
    rows = np.arange(n)
    return cand[rows, k], k == 2, vals[rows, k]


def _aicc(rss: np.ndarray, n: int, p: int, log_w: float) -> tuple[np.ndarray, np.ndarray]:
    """AICc and log-likelihood of a Gaussian least-squares fit with p mean parameters; k = p + 1 counts the noise
    variance."""
    with np.errstate(divide="ignore"):
        llf = -n / 2 * (np.log(2 * np.pi * rss / n) + 1) + 0.5 * log_w
    k = p + 1
    return -2 * llf + 2 * k + 2 * k * (k + 1) / (n - k - 1), llf


def u_model_choice(x, y, seeds=None, level: float = LEVEL, n_boot: int = 2000, seed=0,
                   ref: float = 1.0) -> tuple[dict, np.ndarray] | tuple[None, None]:
    """The U-curve law chosen by AICc among U_MODELS, its optimum on the sampled range, and a seed bootstrap of it.

    ``x``, ``y``: achieved rho and val_loss of each run; ``seeds``: each run's seed (None when unknown).
    A law takes part when it leaves a df of lack of fit across the distinct rho values (more of them than its mean
    parameters) and AICc is defined (n runs > k + 1). rho* is the minimiser of the law on [min rho, max rho]: a
    minimum strictly inside, or a range end, which is reported as no interior optimum, never extrapolated.

    The bootstrap resamples the seed-to-seed scatter, refits all three laws and chooses again by AICc in every
    resample, so the interval carries the uncertainty of the choice itself: with 5-9 points the choice flips
    between resamples, and an interval conditional on the law chosen once would be too narrow (measured: fixing
    the true law in the bootstrap covered rho* less often, 0.75-0.82, than choosing again). Schemes, first that
    applies:

    * ``paired seeds``: every rho point ran the same seeds once each. A seed's offset (its mean loss over rho
      minus the grand mean) shifts its whole curve, which cannot move rho*, so it is removed; the deviations left
      are resampled within each rho. Resampling whole seeds instead would keep any seed x rho correlation, but
      then every resample varies in only (seeds - 1) directions: with 4 seeds its intervals covered rho* in
      0.79-0.89 of 150 draws, this scheme in 0.89-0.97 (quadratic, asymmetric and LINEX laws, with and without
      seed offsets of twice the noise);
    * ``runs within rho``: every point has two or more runs, seeds not paired: runs resampled within each point;
    * ``residuals``: some point has one run: residuals of the chosen law, resampled across runs (model-based). A
      law that bends toward single-run points leaves residuals smaller than the seed noise that moved them, so
      where points of two or more runs measure that noise (the pooled seed sd), residuals whose root mean square
      falls below it are scaled up to it, never down (scheme ``residuals, raised to the seed sd``).

    Resampled deviations are scaled so that a resampled point mean has the variance of the observed one (Davison
    and Hinkley 1997, "modified residuals"): sqrt(S J / ((S - 1)(J - 1))) for seed-and-rho-centred deviations
    (S seeds, J points), sqrt(m / (m - 1)) within a point of m runs, sqrt(n / (n - p)) for residuals of a law with
    p parameters on n runs; unscaled, four seeds would shrink every resampled mean's spread by sqrt(3/4) or more.
    The WLS weights are held at the full-data estimate (the fit is conditional on them, as in quadratic_optimum).

    Returns ({"selection": every law's fit, AICc and Akaike weight, and the chosen one; "optimum": the chosen
    law's rho* with its percentile interval, the shares of resamples whose optimum is interior or at either range
    end, ``interior_shown`` when it is interior in at least ``level`` of them, and L(ref) - L(rho*) where ref was
    sampled}, the rho* draws); (None, None) when no law takes part.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    lo, hi = float(x.min()), float(x.max())
    xp, point = np.unique(x.round(9), return_inverse=True)
    n_j = np.bincount(point)
    mean_j = np.bincount(point, y) / n_j
    sd_j = np.sqrt(np.bincount(point, (y - mean_j[point]) ** 2) / np.maximum(n_j - 1, 1))
    var = seed_variances(n_j, sd_j)
    w_j = np.ones(len(xp)) if var is None else 1 / var
    w = w_j[point]
    names = participating_laws(len(xp), n)
    left_out = {m: f"needs more than {len(spec['params'])} rho values and {len(spec['params']) + 2} runs"
                for m, spec in U_MODELS.items() if m not in names}
    if not names:
        return None, None
    log_w = float(np.log(w).sum())

    fitted = _fit_laws(x, y[None, :], w, lo, hi)
    candidates = {}
    for m in names:
        params, rss = fitted[m]
        aicc, llf = _aicc(rss, n, len(U_MODELS[m]["params"]), log_w)
        x_star, interior, y_star = argmin_in_range(m, params, lo, hi)
        candidates[m] = {"formula": U_MODELS[m]["formula"], "params": params[0].tolist(),
                         "coefficients": _law_coefficients(m, params[0], x, y, w, level),
                         "k": len(U_MODELS[m]["params"]) + 1, "llf": float(llf[0]), "aicc": float(aicc[0]),
                         "rho_star": float(x_star[0]), "interior": bool(interior[0]),
                         "loss_at_rho_star": float(y_star[0])}
    best = min(c["aicc"] for c in candidates.values())
    rel = {m: math.exp(-(c["aicc"] - best) / 2) for m, c in candidates.items()}
    for m, c in candidates.items():
        c["delta_aicc"] = c["aicc"] - best
        c["akaike_weight"] = rel[m] / sum(rel.values())
    chosen = min(candidates, key=lambda m: candidates[m]["aicc"])

    rng = np.random.default_rng(seed)
    scheme, units, xb, wb, Yb = _seed_resamples(x, y, point, xp, n_j, mean_j, sd_j, w_j, seeds,
                                                (chosen, np.asarray(candidates[chosen]["params"])), n_boot, rng)
    refit = choose_laws(xb, Yb, wb, lo, hi, names)
    boot, pick, draws, inside, y_min = (refit[k] for k in ("fits", "pick", "rho_star", "interior", "loss_at_min"))
    rows = np.arange(n_boot)
    alpha = 1 - level
    c = candidates[chosen]
    optimum = {
        "model": chosen, "estimate": c["rho_star"], "interior": c["interior"],
        "loss_at_rho_star": c["loss_at_rho_star"], "ci_bootstrap": percentile_interval(draws, alpha),
        "interior_shown": bool(inside.mean() >= level),
        "bootstrap": {"scheme": scheme, "units": units, "draws": int(n_boot),
                      "model_choice": "AICc among all laws, again in every resample",
                      "share_interior": float(inside.mean()), "share_at_low": float((~inside & (draws == lo)).mean()),
                      "share_at_high": float((~inside & (draws == hi)).mean()),
                      "share_chosen": {m: float((pick == i).mean()) for i, m in enumerate(names)}},
        "loss_gap_rho1": None,
    }
    if lo <= ref <= hi:  # L(ref) - L(rho*) only where ref was sampled: a law is not trusted past its data
        at_ref = np.stack([u_predict(m, boot[m][0], ref) for m in names])[pick, rows]
        l_ref = float(u_predict(chosen, np.asarray(c["params"]), ref))
        optimum["loss_gap_rho1"] = {"ref": ref, "loss_at_ref": l_ref, "estimate": l_ref - c["loss_at_rho_star"],
                                    "ci_bootstrap": percentile_interval(at_ref - y_min, alpha)}
    selection = {"criterion": "AICc", "fitted_to": "runs", "n": n, "n_points": int(len(xp)),
                 "weights": ("none: a rho point has a single run" if var is None else
                             "1 / seed variance of the run's rho point, shrunk to the pooled variance"),
                 "chosen": chosen, "candidates": candidates, "left_out": left_out}
    return {"selection": selection, "optimum": optimum}, draws


def participating_laws(n_rho: int, n_runs: int) -> list[str]:
    """The laws of U_MODELS that take part in the choice for ``n_runs`` runs at ``n_rho`` distinct rho values: those
    that leave a df of lack of fit across the rho values and for which AICc is defined."""
    return [m for m, spec in U_MODELS.items() if n_rho > len(spec["params"]) and n_runs > len(spec["params"]) + 2]


def choose_laws(x, Y, w, lo: float, hi: float, names: list[str]) -> dict:
    """Every law of ``names`` fitted to each row of ``Y`` (B, n) at ``x`` with weights ``w``, and in each row the one
    AICc chooses: its index in ``names`` (``pick``), its minimiser on [lo, hi] (``rho_star``), whether that is a
    minimum strictly inside (``interior``) and the law's value there (``loss_at_min``); ``fits`` holds every law's
    (params, RSS). What the seed bootstrap does to each resample, and the power estimate to each simulated sweep."""
    fits = _fit_laws(x, Y, w, lo, hi)
    log_w = float(np.log(w).sum())
    aiccs = np.stack([_aicc(fits[m][1], len(x), len(U_MODELS[m]["params"]), log_w)[0] for m in names])
    pick = aiccs.argmin(0)
    per_law = [argmin_in_range(m, fits[m][0], lo, hi) for m in names]
    rows = np.arange(Y.shape[0])
    rho_star, interior, loss_at_min = (np.stack([p[k] for p in per_law])[pick, rows] for k in range(3))
    return {"fits": fits, "pick": pick, "rho_star": rho_star, "interior": interior, "loss_at_min": loss_at_min}


def _law_coefficients(model: str, params, x, y, w, level: float) -> dict:
    """statsmodels' coefficient table of a fitted law: t-intervals of its linear coefficients, the asymmetric law's
    conditional on its profiled r, whose own uncertainty is the bootstrap's."""
    if model == "asymmetric":
        # a curvature held at its bound 0 (or an arm with no points, r at a range end) is not estimated: the fit
        # on the other columns is then the constrained fit itself
        active = [0] + [i for i in (1, 2) if params[i] > 0]
        res = sm.WLS(y, split_design(x, params[3])[:, active], weights=w).fit()
        fitted = coefficients(res, [U_MODELS[model]["params"][i] for i in active], level)
        bound = {"estimate": 0.0, "se": None, "ci": None, "p": None}
        co = {name: fitted.get(name, bound) for name in ("m", "kl", "kr")}
        co["r"] = {"estimate": float(params[3]), "se": None, "ci": None, "p": None}
        return co
    res = sm.WLS(y, np.vander(x, len(params), increasing=True), weights=w).fit()
    return coefficients(res, list(U_MODELS[model]["params"]), level)


# each scheme of _seed_resamples, in the words of a verdict: what it resamples
RESAMPLED = {"paired seeds": "seeds within each rho, seed offsets removed", "runs within rho": "runs within each rho",
             "residuals": "residuals (a rho has a single run)",
             "residuals, raised to the seed sd": "residuals scaled up to the seed-to-seed sd (a rho has a single run)"}


def _seed_resamples(x, y, point, xp, n_j, mean_j, sd_j, w_j, seeds, chosen, n_boot: int, rng):
    """(scheme, units resampled, x, weights, Y (n_boot, n)) of the seed bootstrap (see u_model_choice)."""
    J = len(xp)
    if seeds is not None and (n_j >= 2).all():
        ids, s = np.unique(np.asarray(seeds), return_inverse=True)
        S = len(ids)
        counts = np.zeros((S, J), int)
        np.add.at(counts, (s, point), 1)
        if (counts == 1).all():
            table = np.empty((S, J))
            table[s, point] = y
            resid = table - mean_j - (table.mean(1, keepdims=True) - table.mean())  # seed offsets removed
            pick = rng.integers(0, S, (n_boot, S, J))
            drawn = np.take_along_axis(np.broadcast_to(resid, (n_boot, S, J)), pick, axis=1)
            Yb = mean_j + math.sqrt(S * J / ((S - 1) * (J - 1))) * drawn            # (B, S, J)
            return "paired seeds", S, np.tile(xp, S), np.tile(w_j, S), Yb.reshape(n_boot, S * J)
    if (n_j >= 2).all():
        parts = []
        for j in range(J):
            y_j = y[point == j]
            pick = rng.integers(0, n_j[j], (n_boot, n_j[j]))
            parts.append(mean_j[j] + math.sqrt(n_j[j] / (n_j[j] - 1)) * (y_j[pick] - mean_j[j]))
        return "runs within rho", int(n_j.min()), np.repeat(xp, n_j), np.repeat(w_j, n_j), np.hstack(parts)
    model, params = chosen
    fit = u_predict(model, params, x)
    n, p = len(x), len(params)
    resid = (y - fit) * math.sqrt(n / (n - p))
    scheme, floor, rms = "residuals", pooled_sd(n_j, sd_j), math.sqrt(float(np.mean(resid ** 2)))
    if floor and rms < floor:
        scheme, resid = "residuals, raised to the seed sd", resid * (floor / max(rms, 1e-300))
    return scheme, n, x, w_j[point], fit + resid[rng.integers(0, n, (n_boot, n))]


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
