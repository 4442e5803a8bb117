"""Build grading jobs from real data (SAF) or the shipped sample.

Used by ``raygrade demo``, the tests and the benchmarks.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from importlib import resources
from pathlib import Path

from raygrade.datasets.render import render_pages
from raygrade.datasets.saf import SAFAnswer, SAFQuestion, grid_step, load_split
from raygrade.evaluation import score_level
from raygrade.protocol import (
    GradedExample,
    GradingJob,
    ImagePage,
    JobOptions,
    Question,
    Submission,
)


@dataclasses.dataclass(frozen=True)
class HumanGrade:
    """The human grade of one (student, question) item, for agreement figures."""

    student_id: str
    question_id: str
    score: float
    max_score: float


def _pages(text: str, seed: int, header: str) -> list[ImagePage]:
    return [ImagePage(data=base64.b64encode(png).decode()) for png in render_pages(text, seed=seed, header=header)]


def pick_examples(train: SAFQuestion | None, k: int, rng: random.Random) -> list[GradedExample]:
    """Up to ``k`` graded training answers, one per score level first (full, partial, zero)."""
    if train is None or k <= 0:
        return []
    by_label: dict[int, list[SAFAnswer]] = {}
    for a in train.answers:
        if a.response:
            by_label.setdefault(score_level(a.score, train.max_score), []).append(a)
    chosen: list[SAFAnswer] = []
    for label in (2, 1, 0):
        pool = [a for a in by_label.get(label, []) if len(a.response) < 600]
        if pool and len(chosen) < k:
            chosen.append(rng.choice(pool))
    rest = [a for a in train.answers if a not in chosen and a.response and len(a.response) < 600]
    rng.shuffle(rest)
    chosen += rest[: max(0, k - len(chosen))]
    return [GradedExample(answer=a.response, score=a.score, feedback=a.feedback or None) for a in chosen]


def saf_question(q: SAFQuestion, train: SAFQuestion | None = None) -> Question:
    """A SAF question as a :class:`Question`, with every graded training answer of the same
    question (``train``) as examples (what the baseline grader fits on), on the score grid those
    grades use (:func:`~raygrade.datasets.saf.grid_step`)."""
    examples = [GradedExample(answer=a.response, score=a.score) for a in (train.answers if train else ())
                if a.response]
    return Question(id=q.key, prompt=q.text, reference_answer=q.reference or None, max_score=q.max_score,
                    score_step=grid_step([e.score for e in examples], q.max_score), examples=examples)


def saf_job(root: Path, *, questions: int = 6, per_question: int = 6, examples: int = 3, seed: int = 0,
            version: str = "1.0", split: str = "unseen_answers", lang: str = "english", long_answers: int = 2,
            options: JobOptions | None = None) -> tuple[GradingJob, list[HumanGrade]]:
    """A job of real SAF answers rendered as handwriting-style page images.

    Questions are spread over the split; per question, the ``long_answers`` longest
    answers are taken (they wrap onto 2+ pages) plus random others. Graded examples
    come from the *training* split of the same question, so no graded answer is
    also an example.

    Returns:
        The job and the human grades of its items.
    """
    rng = random.Random(seed)
    test = [q for q in load_split(root, split, lang, version) if q.answers]
    train = {q.key: q for q in load_split(root, "training", lang, version)} if split != "training" else {}
    step = max(1, len(test) // questions)
    picked = test[::step][:questions]
    qs, subs, human = [], [], []
    for q in picked:
        answers = [a for a in q.answers if a.response]
        longest = sorted(answers, key=lambda a: len(a.response), reverse=True)[:long_answers]
        others = [a for a in answers if a not in longest]
        rng.shuffle(others)
        chosen = longest + others[: max(0, per_question - len(longest))]
        qs.append(Question(id=q.key, prompt=q.text, reference_answer=q.reference or None, max_score=q.max_score,
                           examples=pick_examples(train.get(q.key), examples, rng)))
        for a in chosen:
            sid = f"{q.key}:{a.id}"
            subs.append(Submission(student_id=sid, pages=_pages(a.response, rng.randrange(1 << 30), f"Q {q.key}"),
                                   question_ids=[q.key]))
            human.append(HumanGrade(sid, q.key, a.score, q.max_score))
    job = GradingJob(assessment={"title": f"SAF {version} {split} ({lang})", "questions": qs}, submissions=subs,
                     options=options or JobOptions())
    return job, human


def sample_job(options: JobOptions | None = None, seed: int = 0) -> GradingJob:
    """The small assessment shipped with raygrade (no human scores), as page images."""
    data = json.loads(resources.files("raygrade.data").joinpath("sample_assessment.json").read_text())
    subs = []
    for i, st in enumerate(data["students"]):
        text = "\n\n".join(f"{qid}: {ans}" for qid, ans in st["answers"].items())
        subs.append(Submission(student_id=st["student_id"], pages=_pages(text, seed + i, "Sample quiz")))
    return GradingJob(assessment={"title": data["title"], "questions": data["questions"]}, submissions=subs,
                      options=options or JobOptions())
