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
