"""Reasoning Gap Recovered, RGR = (acc - base) / (ref - base), and when it is undefined; percentile intervals of
bootstrap replicates. Used by ``w2sr report`` (``w2sr.evaluation.compare`` and ``w2sr.evaluation.seeds``).

Exercised by ``pytest tests/evaluation/test_report.py -k rgr``.
"""

from __future__ import annotations

import numpy as np

MIN_GAP = 0.01  # the reference must beat the base by more than 1 point for RGR to be shown
MISSING = "a score is missing"


def rgr(
    acc: float | None,
    base: float | None,
    ref: float | None,
    min_gap: float = MIN_GAP,
    ref_gain_ci: list[float] | None = None,
) -> tuple[float | None, str]:
    """RGR and, when it is undefined, why: a score is missing, the reference gains at most ``min_gap``, or the
    paired 95% interval of the reference's gain (``ref_gain_ci``) contains zero."""
    if acc is None or base is None or ref is None:
        return None, MISSING
    if ref - base <= min_gap:
        return None, (
            f"undefined: the reference gains {100 * (ref - base):+.1f} points over the base "
            f"(<= {100 * min_gap:.0f}): the gap is too small for a ratio"
        )
    if ref_gain_ci is not None and ref_gain_ci[0] <= 0 <= ref_gain_ci[1]:
        return None, (
            f"undefined: the reference's gain over the base ({100 * (ref - base):+.1f} points) has a 95% "
            f"paired interval [{100 * ref_gain_ci[0]:+.1f}, {100 * ref_gain_ci[1]:+.1f}] that contains "
            "zero"
        )
    return (acc - base) / (ref - base), ""


def interval(replicates: np.ndarray | None) -> list[float] | None:
    """The 95% percentile interval of the finite replicates (None when there are none)."""
    if replicates is None:
        return None
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def ratio_interval(acc: np.ndarray, base: np.ndarray, ref: np.ndarray) -> list[float] | None:
    """The interval of RGR over paired replicates (a replicate whose reference gain is 0 is dropped)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval((acc - base) / (ref - base))
