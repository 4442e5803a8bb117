"""Answer groups: similar answers to one question clustered, so a teacher can score a group at once
(Gradescope's answer groups).

Answers are embedded (the baseline's MiniLM embedder by default: L2-normalised rows) and grouped
by agglomerative clustering with average linkage on cosine distance, cut at ``threshold``
(scikit-learn's ``AgglomerativeClustering``; Müllner, "Modern hierarchical, agglomerative
clustering algorithms", 2011): every pair of groups merged had a mean cosine distance under the
threshold, so a group holds answers that say much the same thing, whatever their number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from raygrade._optional import import_optional
from raygrade.protocol import AnswerGroup, ReviewItem

#: Cosine distance (1 - cosine similarity) under which answers share a group, by default.
DEFAULT_THRESHOLD = 0.25

Embedder = Callable[[Sequence[str]], np.ndarray]


def answer_groups(texts: Sequence[str], embed: Embedder, *, threshold: float = DEFAULT_THRESHOLD
                  ) -> list[list[int]]:
    """Indices of ``texts`` grouped by meaning: ``[[i, j, …], …]``, every index once, members in
    input order, groups by their first member. Empty answers form one group of their own.

    Args:
        texts: The answers (text, or the transcription of a page).
        embed: Texts → an ``(n, d)`` array of L2-normalised rows.
        threshold: Cosine distance in ``(0, 2]`` under which groups merge (average linkage).

    Raises:
        ValueError: ``threshold`` outside ``(0, 2]``.
        MissingDependencyError: scikit-learn (the ``baseline`` extra) is not installed.
    """
    if not 0 < threshold <= 2:
        raise ValueError("threshold must be in (0, 2]")
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    rest = [i for i, t in enumerate(texts) if t.strip()]
    groups: list[list[int]] = [blank] if blank else []
    if len(rest) == 1:
        groups.append(rest)
    elif rest:
        cluster = import_optional("sklearn.cluster", "baseline", "answer groups (agglomerative clustering)")
        emb = np.asarray(embed([texts[i] for i in rest]), dtype=np.float64)
        labels = cluster.AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                                 distance_threshold=threshold).fit_predict(emb)
        by_label: dict[int, list[int]] = {}
        for i, label in zip(rest, labels.tolist()):
            by_label.setdefault(label, []).append(i)
        groups.extend(by_label.values())
    return sorted(groups, key=lambda g: g[0])


class AnswerGrouper:
    """A question's graded items in answer groups (:class:`~raygrade.protocol.AnswerGroup`), the
    clustering cached per (job, question, threshold, items): the same items give the same groups.

    Args:
        embed: The embedder (default: the baseline's MiniLM, built on first use; needs the
            ``baseline`` extra).
        max_cached: Clusterings kept; the cache starts over when full.
    """

    def __init__(self, embed: Embedder | None = None, *, max_cached: int = 64):
        self._embed, self._max = embed, max_cached
        self._cache: dict[tuple, list[list[int]]] = {}

    def _embedder(self) -> Embedder:
        if self._embed is None:
            from raygrade.baseline.similarity import minilm_embedder

            self._embed = minilm_embedder()
        return self._embed

    def groups(self, job_id: str, question_id: str, items: Sequence[ReviewItem], texts: Sequence[str | None],
               threshold: float = DEFAULT_THRESHOLD) -> list[AnswerGroup]:
        """``items`` (one question's, in item order) with their answer ``texts`` in groups; an item
        without text (read as images by a vision model) is a group of its own.

        Raises:
            ValueError: ``threshold`` outside ``(0, 2]``.
            MissingDependencyError: the embedder or scikit-learn is not installed.
        """
        key = (job_id, question_id, threshold, tuple(i.id for i in items))
        members = self._cache.get(key)
        if members is None:
            with_text = [k for k, t in enumerate(texts) if t is not None]
            clustered = answer_groups([texts[k] or "" for k in with_text], self._embedder(), threshold=threshold)
            members = sorted([[with_text[i] for i in g] for g in clustered]
                             + [[k] for k, t in enumerate(texts) if t is None], key=lambda g: g[0])
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = members
        out = []
        for g in members:
            its = [items[k] for k in g]
            reviewed = sum(1 for i in its if i.review is not None)
            out.append(AnswerGroup(
                id=f"group_{its[0].id.removeprefix('item_')}", job_id=job_id, question_id=question_id,
                item_ids=[i.id for i in its], student_ids=[i.student_id for i in its], scores=[i.score for i in its],
                max_score=its[0].max_score, score_step=its[0].score_step, size=len(its),
                sample=(texts[g[0]] or "")[:500],
                mean_confidence=sum(i.confidence for i in its) / len(its), reviewed=reviewed,
                status="done" if reviewed == len(its) else "pending"))
        return out
