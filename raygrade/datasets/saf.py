"""Reader for the SAF (Short Answer Feedback) dataset, Filighera et al., ACL 2022.

Layout: ``SAF1_0/{training,unseen_answers,unseen_questions}/{english,german}/*.xml``
(score 0–1 per answer) and ``SAF2_0/<split>/*.xml`` (points; the maximum per
question is not stated, so it is taken as the highest score seen in that file).
One XML per question with ``questionText``, ``referenceAnswers/referenceAnswer``
and ``studentAnswers/studentAnswer/{response, response_feedback, score,
verification_feedback}``. Questions are keyed by file stem, since some files
share a ``question/@id``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import xml.etree.ElementTree as ET
from pathlib import Path

#: Where the dataset is looked for when no path is given.
DEFAULT_SAF_PATHS = (os.environ.get("RAYGRADE_SAF_PATH", ""), "../shared/data/saf", "../../shared/data/saf")



@dataclasses.dataclass(frozen=True)
class SAFAnswer:
    id: str
    response: str
    feedback: str
    score: float
    label: str


@dataclasses.dataclass(frozen=True)
class SAFQuestion:
    key: str
    text: str
    reference: str
    max_score: float
    answers: tuple[SAFAnswer, ...]


def find_saf(path: str | None = None) -> Path | None:
    """The SAF root: ``path`` if given (must exist), else the first default that exists."""
    if path:
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"SAF dataset not found at {path}")
        return p
    for cand in DEFAULT_SAF_PATHS:
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def _text(el: ET.Element | None) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""


def load_split(root: Path, split: str = "unseen_answers", lang: str = "english",
               version: str = "1.0") -> list[SAFQuestion]:
    """Load one split.

    Args:
        root: The SAF folder (holding ``SAF1_0``/``SAF2_0``).
        split: ``training``, ``unseen_answers`` or ``unseen_questions``.
        lang: ``english`` or ``german`` (v1.0 only).
        version: ``"1.0"`` or ``"2.0"``.

    Returns:
        Questions sorted by key, answers in file order.

    Raises:
        FileNotFoundError: the split folder does not exist.
    """
    folder = root / "SAF1_0" / split / lang if version == "1.0" else root / "SAF2_0" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no SAF split at {folder}")
    out = []
    for f in sorted(folder.glob("*.xml")):
        r = ET.parse(f).getroot()
        answers = []
        for a in r.iter("studentAnswer"):
            try:
                score = float(_text(a.find("score")))
            except ValueError:
                continue
            answers.append(SAFAnswer(id=a.get("id", "").strip(), response=_text(a.find("response")),
                                     feedback=_text(a.find("response_feedback")), score=score,
                                     label=_text(a.find("verification_feedback"))))
        refs = [_text(x) for x in r.iter("referenceAnswer")]
        max_score = 1.0 if version == "1.0" else max([a.score for a in answers] + [1.0])
        out.append(SAFQuestion(key=f.stem, text=_text(r.find("questionText")), reference="\n".join(refs),
                               max_score=max_score, answers=tuple(answers)))
    return out


def grid_step(scores: list[float], max_score: float) -> float | None:
    """The coarsest step of 1, 1/2, 1/4, 1/8 or 1/16 point that every score (and the maximum) is
    a multiple of: the grid the graders used; ``None`` when none is."""
    for step in (1.0, 0.5, 0.25, 0.125, 0.0625):
        if all(abs(x / step - round(x / step)) < 1e-6 for x in [*scores, max_score]):
            return step
    return None


def load_test_train(root: Path, split: str = "unseen_answers", limit: int | None = None, seed: int = 0,
                    version: str = "1.0") -> tuple[list[SAFQuestion], dict[str, SAFQuestion]]:
    """A split's questions with answers (``limit``: a stratified slice of about that many answers,
    spread over the questions, drawn with ``seed``) and the training split by question key (where
    graded examples come from)."""
    test = [q for q in load_split(root, split, version=version) if q.answers]
    train = {q.key: q for q in load_split(root, "training", version=version)}
    if limit:  # a stratified slice: answers spread over questions
        rng = random.Random(seed)
        per = max(1, limit // len(test))
        test = [SAFQuestion(q.key, q.text, q.reference, q.max_score,
                            tuple(rng.sample(q.answers, min(per, len(q.answers))))) for q in test]
        budget, kept = limit, []
        for q in test:
            if budget <= 0:
                break
            kept.append(SAFQuestion(q.key, q.text, q.reference, q.max_score, q.answers[:budget]))
            budget -= len(kept[-1].answers)
        test = kept
    return test, train
