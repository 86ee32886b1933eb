"""A confidence interval for the difference of two accuracies measured on the same images.

The accuracy gate runs the reference and the candidate over the same held-out images, so the
two top-1 accuracies are paired: only the discordant images (one model right, the other wrong)
carry information about their difference. Treating the two as independent samples would make
the interval far too wide when the models agree on almost every image, and the plain Wald
interval collapses to a width of zero when there are no discordant pairs at all.

Method: Newcombe's hybrid score interval for paired proportions (his method 10, with the
continuity-corrected correlation phi; R. G. Newcombe, "Improved confidence intervals for the
difference between binomial proportions based on paired data", Statistics in Medicine 17,
2635-2650, 1998; Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables",
2017, section 8.5, call it "Newcombe square-and-add"). It combines the Wilson score intervals
of the two accuracies and their correlation; its coverage is close to nominal down to small
samples and it never degenerates to zero width. No SciPy: the normal quantile is the standard
library's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

METHOD = "Newcombe hybrid score interval for paired proportions (method 10)"


@dataclass(frozen=True)
class PairedTable:
    """Outcomes of two classifiers on the same ``n`` images.

    ``both``: both right; ``candidate_only``: the candidate right and the reference wrong;
    ``reference_only``: the reference right and the candidate wrong; ``neither``: both wrong.
    """

    both: int
    candidate_only: int
    reference_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.candidate_only + self.reference_only + self.neither

    @property
    def discordant(self) -> int:
        return self.candidate_only + self.reference_only

    @property
    def difference(self) -> float:
        """Candidate minus reference accuracy (a share, not points)."""
        return (self.candidate_only - self.reference_only) / self.n if self.n else 0.0


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _phi(t: PairedTable) -> float:
    """Continuity-corrected correlation of the two outcomes (Newcombe 1998, method 10)."""
    margins = (
        (t.both + t.candidate_only)
        * (t.reference_only + t.neither)
        * (t.both + t.reference_only)
        * (t.candidate_only + t.neither)
    )
    if margins == 0:
        return 0.0
    a = t.both * t.neither - t.candidate_only * t.reference_only
    if a > t.n / 2:
        corrected = a - t.n / 2
    elif a >= 0:
        corrected = 0.0
    else:
        corrected = a
    return corrected / math.sqrt(margins)


def difference_interval(t: PairedTable, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided ``confidence`` interval of candidate minus reference accuracy (shares)."""
    if t.n < 1:
        raise ValueError("no images: a paired interval needs at least one")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p1 = (t.both + t.candidate_only) / t.n  # candidate accuracy
    p2 = (t.both + t.reference_only) / t.n  # reference accuracy
    l1, u1 = wilson(t.both + t.candidate_only, t.n, z)
    l2, u2 = wilson(t.both + t.reference_only, t.n, z)
    phi = _phi(t)
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    high = d + math.sqrt(
        max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1))
    )
    return max(-1.0, low), min(1.0, high)
