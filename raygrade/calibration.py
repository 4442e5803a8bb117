"""Calibrating a provider's confidences on graded examples.

A model's confidence — its own number, or the probability of its score tokens —
is a ranking signal, not a probability: the tiny local model's score-token
probabilities are ≈ 0.9 while it agrees with human graders 40 % of the time. A
:class:`ConfidenceCalibration` maps a raw confidence to the probability that the
grade's level (none / partial / full credit) is the human's, fitted by isotonic
regression (Zadrozny & Elkan, 2002, "Transforming classifier scores into accurate
multiclass probability estimates") on answers graded by the same provider, model
and prompt whose human grades are known (``benchmarks/fidelity.py --calibrate N``
writes one from SAF's training split).

Optionally the map is fitted separately for grades that agree and grades that
disagree with the zero-cost reference-similarity baseline
(``ProviderConfig.baseline_agreement``), so disagreement with the baseline lowers a
grade's confidence by as much as it lowered accuracy on the fitting set, and
changes the order in which items go to review.

A provider loads its map from ``ProviderConfig.calibration_path`` (a JSON file).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raygrade.errors import ConfigError

Stratum = Literal["all", "agree", "disagree"]


class CalibrationCurve(BaseModel):
    """A non-decreasing map [0, 1] → [0, 1], linear between its points, flat outside them."""

    model_config = ConfigDict(extra="forbid")

    x: list[float] = Field(min_length=1)
    y: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CalibrationCurve:
        if len(self.x) != len(self.y):
            raise ValueError("x and y must have the same length")
        if any(b < a for a, b in zip(self.x, self.x[1:])) or any(b < a for a, b in zip(self.y, self.y[1:])):
            raise ValueError("a calibration curve must be non-decreasing")
        if not all(0.0 <= v <= 1.0 for v in self.y):
            raise ValueError("calibrated values must be in [0, 1]")
        return self

    def __call__(self, raw: float) -> float:
        return float(np.interp(raw, self.x, self.y))


class ConfidenceCalibration(BaseModel):
    """A provider's fitted confidence map (JSON on disk).

    Attributes:
        provider: The ``bucket_key`` (provider name / model) the map was fitted for.
        source: The ``confidence_source`` of the raw confidences it maps; grades with
            another source are left as they are.
        n: Graded examples it was fitted on.
        curves: ``"all"``, and ``"agree"``/``"disagree"`` when fitted with baseline agreement.
        prompt_version: The prompt the fitting grades were made with.
    """

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    provider: str
    source: Literal["self_reported", "score_logprob"]
    n: int = Field(ge=1)
    prompt_version: str | None = None
    curves: dict[Stratum, CalibrationCurve]

    @model_validator(mode="after")
    def _check(self) -> ConfidenceCalibration:
        if "all" not in self.curves:
            raise ValueError("curves must include 'all'")
        return self

    def calibrate(self, raw: float, agrees: bool | None = None) -> float:
        """P(level right) for a raw confidence in [0, 1]; ``agrees``: whether the grade's
        level equals the baseline's (``None``: unknown, use the pooled curve)."""
        stratum: Stratum = "all" if agrees is None else ("agree" if agrees else "disagree")
        return round((self.curves.get(stratum) or self.curves["all"])(raw), 4)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ConfidenceCalibration:
        """Read a map written by :meth:`save`.

        Raises:
            ConfigError: missing or invalid file.
        """
        try:
            return cls.model_validate_json(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read calibration file {path}: {exc.strerror}") from None
        except (ValidationError, json.JSONDecodeError) as exc:
            raise ConfigError(f"invalid calibration file {path}: {exc}") from None


def _isotonic(raw: Sequence[float], right: Sequence[bool]) -> CalibrationCurve:
    from raygrade._optional import import_optional

    isotonic = import_optional("sklearn.isotonic", "baseline", "fitting a confidence map (isotonic regression)")
    IsotonicRegression = isotonic.IsotonicRegression  # noqa: N806

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(np.asarray(raw, dtype=float), np.asarray(right, dtype=float))
    return CalibrationCurve(x=[float(v) for v in iso.X_thresholds_],
                            y=[float(min(1.0, max(0.0, v))) for v in iso.y_thresholds_])


def fit_calibration(raw: Sequence[float], right: Sequence[bool], *, provider: str,
                    source: Literal["self_reported", "score_logprob"], agrees: Sequence[bool | None] | None = None,
                    min_per_stratum: int = 20, prompt_version: str | None = None) -> ConfidenceCalibration:
    """Fit a calibration map by isotonic regression of "level right" on raw confidence.

    Args:
        raw: Raw confidences in [0, 1], one per graded example.
        right: Whether each example's grade level equals the human's.
        provider: ``bucket_key`` recorded in the map.
        source: The raw confidences' ``confidence_source``.
        agrees: Per example, whether the grade's level equals the baseline's (``None``
            where unknown); when both groups have ``min_per_stratum`` examples, each gets its own curve.
        min_per_stratum: Examples needed to fit a stratum's curve.
        prompt_version: Recorded in the map.

    Returns:
        The map; isotonic regression keeps the mean, so on the fitting set the mean
        calibrated confidence equals the accuracy (per stratum).

    Raises:
        ValueError: no examples, or lengths differ.
    """
    if not raw or len(raw) != len(right) or (agrees is not None and len(agrees) != len(raw)):
        raise ValueError("need one 'right' (and 'agrees') per raw confidence, at least one")
    curves: dict[Stratum, CalibrationCurve] = {"all": _isotonic(raw, right)}
    if agrees is not None:
        strata: tuple[tuple[Stratum, bool], ...] = (("agree", True), ("disagree", False))
        for name, want in strata:
            idx = [i for i, a in enumerate(agrees) if a is want]
            if len(idx) >= min_per_stratum:
                curves[name] = _isotonic([raw[i] for i in idx], [right[i] for i in idx])
    return ConfidenceCalibration(provider=provider, source=source, n=len(raw), curves=curves,
                                 prompt_version=prompt_version)
