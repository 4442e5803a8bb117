"""A job's confidences recalibrated from its audit reviews.

Items routed to review by risk (``review_share``, ``review_target``) are the grades most likely to
be wrong: the teacher's agreement with the model on them says little about the other grades
(selection bias). An audit share (``JobOptions.review_audit_share``) adds a uniformly random
sample of the graded items to the review queue (:func:`is_audit`: a hash of the job and item, so
the choice is stable and needs no storage). From the audited items a teacher has reviewed — pairs
(the grader's confidence, whether the teacher kept the model's score) — a logistic recalibration
``p' = σ(a · logit(p) + b)`` (Platt scaling on the confidence's logit, Platt 1999; Guo et al.
2017) is fitted by maximum a posteriori with a Gaussian prior centred on the identity (``a = 1``,
``b = 0``, standard deviation :data:`PRIOR_SD`): with a few audits it stays near the grader's own
calibration, and it follows the audits as they accumulate (:func:`fit_recalibration`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence

#: Standard deviation of the prior on the slope and intercept (logit units): a miss at 0.95 and a
#: hit at 0.9 move the slope from 1 to ≈ 0.73; forty audits of a grader 2.5× too
#: confident in logit, to ≈ 0.41 (its true 0.4).
PRIOR_SD = 0.35
_EPS = 1e-6


def is_audit(job_id: str, student_id: str, question_id: str, share: float) -> bool:
    """Whether an item is in its job's audit sample: a uniform draw from the SHA-256 of the job
    and item ids below ``share`` (stable: the same items whenever it is asked)."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{job_id}\x1f{student_id}\x1f{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


@dataclasses.dataclass(frozen=True)
class Recalibration:
    """``p' = σ(slope · logit(p) + intercept)``, fitted on ``audited`` reviewed audit items
    (the identity when none)."""

    slope: float = 1.0
    intercept: float = 0.0
    audited: int = 0

    def apply(self, confidence: float) -> float:
        """The recalibrated confidence (in (0, 1); the confidence itself without audits)."""
        if self.audited == 0:
            return confidence
        return _sigmoid(self.slope * _logit(confidence) + self.intercept)


def fit_recalibration(pairs: Sequence[tuple[float, bool]], prior_sd: float = PRIOR_SD) -> Recalibration:
    """The MAP logistic recalibration of ``pairs`` (confidence, the teacher kept the model's score).

    Minimises ``−Σ log L + ((a − 1)² + b²) / (2 · prior_sd²)`` by Newton's method with step
    halving (the negative log-posterior is convex: one minimum).

    Args:
        pairs: One per audited, reviewed item.
        prior_sd: The prior's standard deviation (smaller: more audits needed to move the map).

    Raises:
        ValueError: ``prior_sd`` not positive.
    """
    if prior_sd <= 0:
        raise ValueError("prior_sd must be > 0")
    if not pairs:
        return Recalibration()
    xs = [_logit(c) for c, _ in pairs]
    ys = [1.0 if ok else 0.0 for _, ok in pairs]
    lam = 1 / prior_sd**2

    def objective(a: float, b: float) -> float:  # the negative log-posterior
        nll = 0.0
        for x, y in zip(xs, ys):
            z = a * x + b
            nll += max(z, 0.0) + math.log1p(math.exp(-abs(z))) - y * z  # log(1 + e^z) − y·z, stably
        return nll + lam * ((a - 1) ** 2 + b * b) / 2

    a, b = 1.0, 0.0
    current = objective(a, b)
    for _ in range(100):
        ga, gb, haa, hab, hbb = lam * (a - 1), lam * b, lam, 0.0, lam
        for x, y in zip(xs, ys):
            p = _sigmoid(a * x + b)
            r, w = p - y, p * (1 - p)
            ga, gb = ga + r * x, gb + r
            haa, hab, hbb = haa + w * x * x, hab + w * x, hbb + w
        det = haa * hbb - hab * hab
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        step = 1.0  # damped Newton: halve the step until the objective falls
        while step > 1e-8 and (nxt := objective(a - step * da, b - step * db)) > current:
            step /= 2
        if step <= 1e-8:
            break
        a, b, current = a - step * da, b - step * db, nxt
        if step * (abs(da) + abs(db)) < 1e-10:
            break
    return Recalibration(slope=a, intercept=b, audited=len(pairs))

