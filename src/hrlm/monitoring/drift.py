"""Drift statistics on arrays: the population stability index and the embedding drift score.

Pure functions of numbers; nothing here reads a model or a database.

**PSI** (population stability index): ``sum((c - r) * ln(c / r))`` over bins, where ``r`` and ``c``
are the reference's and the current window's shares of each bin. Empty bins would make the
logarithm infinite, so every share is floored at :data:`PSI_EPSILON` (1e-4) before the sum, the
usual convention (Siddiqi, *Credit Risk Scorecards*, 2006; Yurdakul, "Statistical properties of the
population stability index", 2018, who also shows that with ``n`` and ``m`` observations and ``B``
bins, ``PSI / (1/n + 1/m)`` follows a chi-square with ``B - 1`` degrees of freedom when nothing
shifted: :func:`psi_noise` turns that into the PSI that noise alone reaches 0.1% of the time). With
sparse bins (many labels, small windows) the floor gives the PSI a longer tail than the chi-square:
the monitor uses :func:`psi_null_quantile`, a seeded parametric bootstrap from the reference's bins,
instead (measured on O*NET, 22 groups, windows of 80: chi-square 0.68, bootstrap 1.21 at 99.9%, and
an unshifted window reached 0.82).

**Embedding drift** (one method, chosen): a domain classifier, the default of Evidently's embedding
drift detection (Evidently AI, "Embeddings drift detection", ``model`` method, threshold 0.55): a
logistic regression is trained to tell the current window's pooled vectors from the reference's,
and its ROC AUC on vectors it did not see is the score: 0.5 when the two cannot be told apart, 1.0
when they always can. It is seeded (the same inputs give the same score) and bounded in time by the
sample sizes the caller passes.

The AUC is cross-fitted on two halves (train on one, score the other, and the reverse; the mean of
the two AUCs), so that each half's AUC comes from a classifier that never saw its points: with
nothing shifted, it is then exactly the Mann-Whitney statistic of exchangeable scores, whose
quantiles are known (:func:`auc_noise`, on one half's sizes). As Evidently does for small samples,
a window must beat both the setting and that level (99.9%). Why not 5-fold cross-validation: its
pooled AUC spreads wider than Mann-Whitney (measured on O*NET pooled vectors, reference 400,
windows of 50: standard deviation 0.064 against 0.043, and 1 of 20 unshifted windows past the 99.9%
level); the two-half mean measured 0.058 over 200 unshifted windows, none past the one-half level
(0.690), while windows of occupation descriptions scored 0.78 to 0.89.

Why 99.9% and not 95%: a monitor checks several rules on every window, and "at most one false
alarm in 20 windows" needs each rule's per-window false-alarm rate well under 1%.

Example:
    >>> round(psi(np.array([50, 50]), np.array([50, 50])), 6)
    0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PSI_EPSILON = 1e-4  # floor of a bin's share, so an empty bin adds a large but finite term
NOISE_QUANTILE = 0.999  # how rarely noise alone may cross a statistical floor (per window and rule)
DEFAULT_BINS = 10


def psi(ref: Any, cur: Any, bins: Any = None) -> float:
    """The population stability index of ``cur`` against ``ref``.

    Args:
        ref, cur: with ``bins=None``, counts (or shares) per category, of the same length (a label
            distribution); otherwise raw numeric values, binned by ``bins``.
        bins: bin edges (an array, e.g. from :func:`quantile_edges` on the reference), or an int for
            that many quantile bins of the reference.

    Returns:
        The PSI (0 = the same distribution; 0.1 moderate, 0.25 significant shift). ``nan`` when
        either side is empty.

    Example:
        >>> round(psi(np.array([80, 20]), np.array([50, 50])), 4)
        0.4159
    """
    r, c = _shares(ref, cur, bins)
    if r is None or c is None:
        return float("nan")
    r = np.maximum(r, PSI_EPSILON)
    c = np.maximum(c, PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def _shares(ref: Any, cur: Any, bins: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    if bins is None:
        rc = np.asarray(ref, dtype=np.float64)
        cc = np.asarray(cur, dtype=np.float64)
        if rc.shape != cc.shape:
            raise ValueError(f"psi: {rc.shape[0]} reference categories against {cc.shape[0]} current ones.")
    else:
        rv = np.asarray(ref, dtype=np.float64).ravel()
        cv = np.asarray(cur, dtype=np.float64).ravel()
        if rv.size == 0 or cv.size == 0:
            return None, None
        edges = quantile_edges(rv, bins) if isinstance(bins, int) else np.asarray(bins, dtype=np.float64)
        rc, cc = bin_counts(rv, edges), bin_counts(cv, edges)
    if rc.sum() <= 0 or cc.sum() <= 0:
        return None, None
    return rc / rc.sum(), cc / cc.sum()


def quantile_edges(values: Any, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (repeated edges merged), for :func:`bin_counts`.

    Example:
        >>> quantile_edges(np.arange(10), 2).tolist()
        [4.5]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return np.zeros(0)
    inner = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(inner)


def bin_counts(values: Any, edges: Any) -> np.ndarray:
    """Counts of ``values`` in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    edges = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(edges, np.asarray(values, dtype=np.float64).ravel(), side="left")
    return np.bincount(idx, minlength=edges.size + 1).astype(np.float64)


def psi_noise(n_ref: int, n_cur: int, n_bins: int, quantile: float = NOISE_QUANTILE) -> float:
    """The PSI that sampling noise alone exceeds with probability ``1 - quantile`` (Yurdakul, 2018).

    With nothing shifted, ``PSI / (1/n_ref + 1/n_cur)`` is approximately chi-square with
    ``n_bins - 1`` degrees of freedom. Small windows over many labels reach a PSI of 0.25 by chance;
    a rule's effective threshold is the larger of its setting and this.

    Example:
        >>> round(psi_noise(1000, 100, 22), 3)
        0.515
    """
    from scipy.stats import chi2

    if n_ref <= 0 or n_cur <= 0 or n_bins < 2:
        return float("inf")
    return float(chi2.ppf(quantile, n_bins - 1) * (1.0 / n_ref + 1.0 / n_cur))


def psi_null_quantile(
    ref_counts: Any, n_cur: int, *, quantile: float = NOISE_QUANTILE, draws: int = 5000, seed: int = 0
) -> float:
    """The PSI that two samples of the reference's distribution reach by chance, at ``quantile`` (parametric bootstrap).

    Draws ``draws`` pairs (a sample of the reference's size and one of ``n_cur``) from the
    reference's bin shares and returns the ``quantile`` of their PSIs. Unlike :func:`psi_noise`'s
    chi-square it holds for sparse bins too (20 labels, a window of 80 predictions), where the
    epsilon floor of empty bins gives the PSI a long tail. Seeded: the same inputs give the same level.

    Example:
        >>> round(psi_null_quantile([500, 500], 100, quantile=0.5), 3)
        0.005
    """
    counts = np.asarray(ref_counts, dtype=np.float64)
    n_ref = int(counts.sum())
    if n_ref <= 0 or n_cur <= 0 or len(counts) < 2:
        return float("inf")
    rng = np.random.default_rng(seed)
    shares = counts / n_ref
    r = np.maximum(rng.multinomial(n_ref, shares, size=draws) / n_ref, PSI_EPSILON)
    c = np.maximum(rng.multinomial(n_cur, shares, size=draws) / n_cur, PSI_EPSILON)
    return float(np.quantile(np.sum((c - r) * np.log(c / r), axis=1), quantile))


def auc_noise(n_ref: int, n_cur: int, quantile: float = NOISE_QUANTILE) -> float:
    """The ROC AUC a random classifier exceeds with probability ``1 - quantile`` on these sample sizes.

    The AUC is the Mann-Whitney U over ``n_ref * n_cur``; under no difference its standard deviation
    is ``sqrt((n_ref + n_cur + 1) / (12 n_ref n_cur))`` (normal approximation).

    Example:
        >>> round(auc_noise(300, 300), 3)
        0.573
    """
    from scipy.stats import norm

    if n_ref <= 0 or n_cur <= 0:
        return float("inf")
    sd = math.sqrt((n_ref + n_cur + 1) / (12.0 * n_ref * n_cur))
    return float(0.5 + norm.ppf(quantile) * sd)


@dataclass(frozen=True)
class DriftScore:
    """An embedding drift score: the domain classifier's ROC AUC and what it was measured on."""

    auc: float
    n_ref: int
    n_cur: int
    noise: float  # the AUC a random classifier exceeds 0.1% of the time on one half of these sample sizes

    def to_dict(self) -> dict[str, Any]:
        return {"auc": self.auc, "n_ref": self.n_ref, "n_cur": self.n_cur, "noise": self.noise}


def embedding_drift(
    ref: np.ndarray, cur: np.ndarray, *, sample_size: int = 300, ref_size: int = 600, seed: int = 0
) -> DriftScore:
    """How well a domain classifier tells ``cur``'s vectors from ``ref``'s: its cross-fitted ROC AUC.

    Both sides are subsampled (seeded), the current window to at most ``sample_size`` rows and the
    reference to at most ``ref_size`` (a larger reference lowers the noise level), and split in two
    stratified halves; a logistic regression (standardised inputs, L2 with ``C=0.1``, balanced
    classes) trained on each half scores the other, and the score is the mean of the two AUCs.

    Args:
        ref: reference vectors, shape ``(n, d)``.
        cur: current vectors, shape ``(m, d)``.
        sample_size: the most current rows used (bounds the time).
        ref_size: the most reference rows used.
        seed: the subsampling and split seed.

    Returns:
        A :class:`DriftScore` whose ``noise`` is the 99.9% null level for one half's sizes (``auc``
        is ``nan`` when a side has fewer than 4 rows).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> embedding_drift(rng.normal(size=(200, 8)), rng.normal(3, 1, size=(200, 8))).auc > 0.95
        True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    ref = _subsample(np.asarray(ref, dtype=np.float64), ref_size, rng)
    cur = _subsample(np.asarray(cur, dtype=np.float64), sample_size, rng)
    n_ref, n_cur = len(ref), len(cur)
    noise = auc_noise(n_ref // 2, n_cur // 2)
    if n_ref < 4 or n_cur < 4:
        return DriftScore(float("nan"), n_ref, n_cur, noise)
    x = np.vstack([ref, cur])
    y = np.r_[np.zeros(n_ref, dtype=int), np.ones(n_cur, dtype=int)]
    aucs = []
    for train, test in StratifiedKFold(2, shuffle=True, random_state=seed).split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))
        clf.fit(x[train], y[train])
        aucs.append(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))
    return DriftScore(float(np.mean(aucs)), n_ref, n_cur, noise)


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.sort(rng.choice(len(x), n, replace=False))]
