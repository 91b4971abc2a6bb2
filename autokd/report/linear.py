"""The linear model under the orthogonality analysis: OLS with HC3 standard errors, Bell-McCaffrey degrees of
freedom, the sign-flip (wild) Freedman-Lane Wald test, and generalized variance inflation factors.

Generic numerics on design matrices; what the model means (factors, levels, verdicts) is in
:mod:`autokd.report.orthogonality`, which documents and validates the choices made here. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["OLSFit", "fit_ols_hc3", "quad_form", "bell_mccaffrey_df", "sign_patterns", "wald_signflip", "gvif",
           "aliased_blocks"]

# --------------------------------------------------------------------------- #
# numerical core
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class OLSFit:
    """OLS fit with HC3 covariance. ``bread`` is (X'X)^-1, ``solver`` is (X'X)^-1 X' (p x n)."""

    beta: np.ndarray
    cov: np.ndarray
    leverage: np.ndarray
    resid: np.ndarray
    solver: np.ndarray
    bread: np.ndarray


def fit_ols_hc3(X: np.ndarray, y: np.ndarray) -> OLSFit:
    """OLS coefficients and the HC3 covariance (X'X)^-1 X' diag(e_i^2 / (1 - h_ii)^2) X (X'X)^-1.

    ``X`` must have full column rank (the caller checks). HC3 is undefined when some h_ii = 1: the covariance
    is then not finite, and the caller must check ``leverage``. Returns :class:`OLSFit`.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    bread = np.linalg.inv(X.T @ X)
    solver = bread @ X.T
    beta = solver @ y
    leverage = np.einsum("ij,ji->i", X, solver)
    resid = y - X @ beta
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = (resid / (1.0 - leverage)) ** 2
        cov = (solver * weight) @ solver.T
    return OLSFit(beta=beta, cov=cov, leverage=leverage, resid=resid, solver=solver, bread=bread)


def quad_form(b: np.ndarray, C: np.ndarray) -> np.ndarray:
    """b_k' C_k^-1 b_k for stacks b (B, q), C (B, q, q); a singular C uses the pseudo-inverse."""
    if b.shape[1] == 1:
        c, v = C[:, 0, 0], b[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = v * v / c
        return np.where(c > 0, out, np.where(v == 0, 0.0, np.inf))
    try:
        x = np.linalg.solve(C, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        x = np.einsum("bij,bj->bi", np.linalg.pinv(C), b)
    return np.einsum("bi,bi->b", b, x)


def bell_mccaffrey_df(w: np.ndarray, X: np.ndarray, fit: OLSFit, df_resid: int) -> float:
    """Satterthwaite degrees of freedom of the variance estimate sum_i w_i e_i^2 (HC3: w_i = a_i^2 / (1 - h_ii)^2
    for the estimate a'y), under the homoscedastic normal reference model where e = M eps, M = I - H (Bell &
    McCaffrey 2002; Imbens & Kolesar 2016): tr(WM)^2 / tr(WMWM) = (sum_i w_i M_ii)^2 / sum_ij w_i w_j M_ij^2.
    Computed without the n x n matrix M: sum_ij w_i w_j M_ij^2 = sum_i w_i^2 (1 - 2 h_ii) + tr((A B)^2), with
    A = (X'X)^-1 and B = X' W X. Capped at the residual df.
    """
    h = fit.leverage
    AB = fit.bread @ ((X * w[:, None]).T @ X)
    den = float(np.sum(w * w * (1.0 - 2.0 * h)) + np.sum(AB * AB.T))
    if not den > 0:
        return float(df_resid)
    return float(min(df_resid, float(w @ (1.0 - h)) ** 2 / den))


def sign_patterns(n: int, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(n, B) matrix of +-1 and whether it enumerates all patterns (first sign fixed at +1)."""
    if n - 1 < 31 and 2 ** (n - 1) <= n_perm:
        codes = np.arange(2 ** (n - 1))
        bits = (codes[None, :] >> np.arange(n - 1)[:, None]) & 1
        signs = np.vstack([np.ones((1, codes.size)), 1.0 - 2.0 * bits])
        return signs, True
    return rng.integers(0, 2, size=(n, n_perm)) * 2.0 - 1.0, False


def wald_signflip(X: np.ndarray, y: np.ndarray, cols: list[int], fit: OLSFit, signs: np.ndarray,
                   exact: bool) -> tuple[float, float]:
    """HC3 Wald statistic for beta[cols] = 0 and its restricted-residual sign-flip p-value.

    Freedman-Lane: y* = X_r b_r + s * e_r. Since X_r b_r lies in the column space of the full model, it changes
    neither the full-model residuals nor beta*[cols], so only s * e_r has to be refitted.
    """
    n = X.shape[0]
    keep = [j for j in range(X.shape[1]) if j not in cols]
    Xr = X[:, keep]
    er = y - Xr @ np.linalg.lstsq(Xr, y, rcond=None)[0]
    G = fit.solver[cols]                                         # q x n
    q = len(cols)
    scale = 1.0 / (1.0 - fit.leverage) ** 2
    GG = (G[:, None, :] * G[None, :, :]).reshape(q * q, n)       # q^2 x n

    def stat(S: np.ndarray) -> np.ndarray:                       # S: n x B responses
        b = G @ S                                                # q x B
        E = S - X @ (fit.solver @ S)
        C = (GG @ (E * E * scale[:, None])).T.reshape(-1, q, q)
        return quad_form(b.T, C)

    t_obs = float(stat(y[:, None])[0])
    tol = 1e-9 * abs(t_obs) + 1e-300
    exceed = 0
    block = max(1, 2_000_000 // max(n, 1))
    for start in range(0, signs.shape[1], block):
        S = er[:, None] * signs[:, start:start + block]
        exceed += int(np.count_nonzero(stat(S) >= t_obs - tol))
    B = signs.shape[1]
    p = exceed / B if exact else (1 + exceed) / (1 + B)
    return t_obs, min(1.0, p)


def _corr_dets(D: np.ndarray) -> tuple[np.ndarray, float]:
    R = np.corrcoef(D, rowvar=False) if D.shape[1] > 1 else np.ones((1, 1))
    return np.atleast_2d(R), float(np.linalg.det(np.atleast_2d(R)))


def gvif(D: np.ndarray, blocks: Sequence[Sequence[int]]) -> list[float | None]:
    """Generalized VIF (Fox & Monette 1992) of each block of dummy columns of ``D`` (no intercept):
    GVIF = det(R11) det(R22) / det(R), R the correlation matrix of all dummy columns, R11 the block's part and
    R22 the rest. 1 for a block uncorrelated with the others; None when det(R) is 0 (aliased columns).
    """
    D = np.asarray(D, dtype=float)
    R, det_all = _corr_dets(D)
    out: list[float | None] = []
    if not det_all > 1e-12:
        return [None] * len(blocks)
    for block in blocks:
        block = list(block)
        rest = [j for j in range(D.shape[1]) if j not in block]
        d11 = float(np.linalg.det(R[np.ix_(block, block)]))
        d22 = float(np.linalg.det(R[np.ix_(rest, rest)])) if rest else 1.0
        out.append(max(1.0, d11 * d22 / det_all))
    return out


def aliased_blocks(X: np.ndarray, blocks: Mapping[str, list[int]]) -> list[str]:
    """Factors whose dummy columns are (partly) in the span of the other columns."""
    rank = np.linalg.matrix_rank(X)
    out = []
    for name, cols in blocks.items():
        rest = np.delete(X, cols, axis=1)
        if np.linalg.matrix_rank(rest) + len(cols) > rank:
            out.append(name)
    return out
