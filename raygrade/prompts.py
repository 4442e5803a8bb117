"""Grading prompts, the output JSON schema, and parsing of the model's answer.

The output is an object keyed by student alias, then by question id, so a
schema-constrained decoder (vLLM/xgrammar, OpenAI strict mode) must produce an
entry for every item: nothing can be silently skipped. Student ids are replaced
by aliases (``s1``, ``s2``, ...) so they never reach the provider.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeGuard

from pydantic import BaseModel, ConfigDict

from raygrade.protocol import ImagePage, Question, ResolvedPage, StoredImage, TextPage

#: Upper bound on feedback length when the schema carries bounds: about 50 tokens of
#: prose, 200 in the worst case of one character per token.
MAX_FEEDBACK_CHARS = 200

#: Bumped whenever the prompt or schema changes; recorded with every grade.
PROMPT_VERSION = "rg-2026-12-03.1"

SYSTEM_PROMPT = (
    "You are an experienced teaching assistant grading students' answers. "
    "Grade every listed student on every listed question against the question's reference answer "
    "and rubric, consistently with any graded examples. A score is between 0 and the question's "
    "maximum. Feedback is one or two sentences to the student: what is right and what is missing. "
    "Confidence is your probability, from 0 to 1, that a careful human grader gives the same score. "
    "Reply with JSON only."
)


class StudentWork(BaseModel):
    """One student's pages as they go into a request (already OCR'd in OCR mode)."""

    model_config = ConfigDict(extra="forbid")

    student_id: str
    alias: str
    pages: list[ResolvedPage]  # StoredImage in the job store and batcher; graders read them into ImagePage
    page_indices: list[int]
    question_ids: list[str]


def question_section(questions: list[Question]) -> str:
    """The text describing the questions (the part every request of a group shares)."""
    parts = ["# Questions"]
    for q in questions:
        parts.append(f"\n## Question {q.id} (maximum {_fmt(q.max_score)} points)\n{q.prompt.strip()}")
        if (grid := q.allowed_scores()) is not None:
            parts.append("Allowed scores: " + ", ".join(_fmt(s) for s in grid))
        if q.reference_answer:
            parts.append(f"Reference answer:\n{q.reference_answer.strip()}")
        if q.rubric:
            parts.append(f"Rubric:\n{q.rubric.strip()}")
        for i, ex in enumerate(q.examples, 1):
            fb = f" Feedback: {ex.feedback.strip()}" if ex.feedback else ""
            parts.append(f"Graded example {i}: \"{ex.answer.strip()}\" -> score {_fmt(ex.score)}.{fb}")
    return "\n".join(parts)


def student_header(alias: str) -> str:
    return f"\n# Student {alias}"


def page_header(n: int) -> str:
    return f"[Page {n}]"


def build_messages(questions: list[Question], students: list[StudentWork], *,
                   include_model_answer_images: bool = False) -> list[dict[str, Any]]:
    """OpenAI chat messages for one batch.

    Returns:
        ``[system, user]``. The system message is every request's stable prefix for these
        questions: the instructions, then the questions with their rubrics, reference answers and
        graded examples (what providers cache: OpenAI's automatic prefix cache, Anthropic's
        ``cache_control`` breakpoint, Gemini's implicit cache). The user content is a list of
        ``text`` and ``image_url`` parts (images as ``data:`` URIs), in page order per student,
        or one string when it is all text.
    """
    content: list[dict[str, Any]] = []
    if include_model_answer_images:
        for q in questions:
            for img in q.model_answer_images:
                content.append({"type": "text", "text": f"Model answer image for question {q.id}:"})
                content.append(_image_part(img))
    for s in students:
        content.append({"type": "text", "text": student_header(s.alias)
                        + f" (answers questions: {', '.join(s.question_ids)})"})
        for n, page in enumerate(s.pages, 1):
            if isinstance(page, TextPage):
                content.append({"type": "text", "text": f"{page_header(n)}\n{page.text.strip()}"})
            else:
                content.append({"type": "text", "text": page_header(n)})
                content.append(_image_part(page))
    content.append({"type": "text", "text": "\nReturn the grades as JSON."})
    # Merge adjacent text parts: fewer parts, same tokens; text-only servers get one string.
    merged: list[dict[str, Any]] = []
    for part in content:
        if merged and part["type"] == "text" and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + "\n" + part["text"]}
        else:
            merged.append(part)
    user: Any = merged[0]["text"] if len(merged) == 1 else merged
    return [{"role": "system", "content": f"{SYSTEM_PROMPT}\n\n{question_section(questions)}"},
            {"role": "user", "content": user}]


def _image_part(img: ImagePage | StoredImage) -> dict[str, Any]:
    if not isinstance(img, ImagePage):  # a StoredImage: the batcher resolves them before grading
        raise TypeError(f"page of type {img.type!r} must be resolved into an image before a request is built")
    return {"type": "image_url", "image_url": {"url": f"data:{img.media_type};base64,{img.data}"}}


def output_schema(questions: list[Question], students: list[StudentWork], *,
                  bounds: bool, feedback_max_chars: int = MAX_FEEDBACK_CHARS) -> dict[str, Any]:
    """JSON schema of the answer: ``{alias: {question_id: {feedback, score, confidence}}}``.

    Args:
        bounds: Add ``minimum``/``maximum``/``maxLength`` (vLLM's xgrammar enforces
            them; OpenAI's strict mode does not accept all of them). A question with
            ``score_step`` always gets an ``enum`` of its allowed scores.
        feedback_max_chars: The feedback's ``maxLength`` (characters) where ``bounds`` is set.
    """
    qmap = {q.id: q for q in questions}

    def item(q: Question) -> dict[str, Any]:
        score: dict[str, Any] = {"type": "number"}
        if (grid := q.allowed_scores()) is not None:
            score = {"enum": grid}
        elif bounds:
            score.update(minimum=0, maximum=q.max_score)
        feedback: dict[str, Any] = {"type": "string"}
        confidence: dict[str, Any] = {"type": "number"}
        if bounds:
            feedback["maxLength"] = feedback_max_chars
            confidence.update(minimum=0, maximum=1)
        return {"type": "object", "properties": {"feedback": feedback, "score": score, "confidence": confidence},
                "required": ["feedback", "score", "confidence"], "additionalProperties": False}

    props = {}
    for s in students:
        qprops = {qid: item(qmap[qid]) for qid in s.question_ids}
        props[s.alias] = {"type": "object", "properties": qprops, "required": list(qprops),
                          "additionalProperties": False}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


class ParsedGrade(BaseModel):
    alias: str
    question_id: str
    score: float
    feedback: str
    confidence: float
    score_prob: float | None = None


_SCORE_VALUE = re.compile(r'(?<!\\)"score"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')


def score_probabilities(content: str, token_logprobs: list[tuple[str, float]] | None) -> list[float] | None:
    """P(score tokens) for every ``"score": <number>`` in ``content``, in document order.

    The probability of a score is the product of the probabilities of the completion
    tokens that overlap the number's characters (each conditioned on everything before
    it: the prompt and the feedback the schema puts first). ``None`` when no logprobs
    were returned or they do not spell ``content`` (trailing tokens such as vLLM's
    end-of-turn token are allowed).
    """
    if not token_logprobs or not "".join(t for t, _ in token_logprobs).startswith(content):
        return None
    starts, pos = [], 0
    for tok, _ in token_logprobs:
        starts.append(pos)
        pos += len(tok)
    out = []
    for m in _SCORE_VALUE.finditer(content):
        a, b = m.start(1), m.end(1)
        lp = sum(lp for (tok, lp), st in zip(token_logprobs, starts) if st < b and st + len(tok) > a)
        out.append(math.exp(lp))
    return out


def parse_output(content: str | None, questions: list[Question], students: list[StudentWork],
                 token_logprobs: list[tuple[str, float]] | None = None
                 ) -> tuple[list[ParsedGrade], dict[tuple[str, str], str]]:
    """Check the model's answer against the batch.

    Returns:
        ``(grades, invalid)``: valid grades, and ``{(alias, question_id): reason}`` for
        every expected item that is missing or invalid (not JSON, score out of
        ``[0, max_score]`` or off the allowed grid, confidence outside ``[0, 1]``).
        Reasons never quote student text. With ``token_logprobs``, each grade's
        ``score_prob`` is :func:`score_probabilities` of its score.
    """
    expected = [(s.alias, qid) for s in students for qid in s.question_ids]
    try:
        data = json.loads(content or "")
    except json.JSONDecodeError as exc:
        return [], {k: f"output is not valid JSON ({exc.msg} at char {exc.pos})" for k in expected}
    if not isinstance(data, dict):
        return [], {k: "output is not a JSON object" for k in expected}
    qmap = {q.id: q for q in questions}
    grades: list[ParsedGrade] = []
    invalid: dict[tuple[str, str], str] = {}
    # Scores appear in the text in the order json.loads kept the objects' keys.
    order = [(a, q) for a, v in data.items() if isinstance(v, dict) for q, e in v.items()
             if isinstance(e, dict) and "score" in e]
    probs = score_probabilities(content or "", token_logprobs)
    prob_of = dict(zip(order, probs)) if probs is not None and len(probs) == len(order) else {}
    for alias, qid in expected:
        entry = data.get(alias, {}).get(qid) if isinstance(data.get(alias), dict) else None
        if not isinstance(entry, dict):
            invalid[(alias, qid)] = "grade missing from output"
            continue
        reason = _check_entry(entry, qmap[qid])
        if reason:
            invalid[(alias, qid)] = reason
            continue
        grades.append(ParsedGrade(alias=alias, question_id=qid, score=float(entry["score"]),
                                  feedback=entry["feedback"].strip(), confidence=float(entry["confidence"]),
                                  score_prob=prob_of.get((alias, qid))))
    return grades, invalid


def _check_entry(entry: dict[str, Any], q: Question) -> str | None:
    score, conf, fb = entry.get("score"), entry.get("confidence"), entry.get("feedback")
    if not _is_number(score):
        return "score is not a number"
    if not 0 <= score <= q.max_score:
        return f"score {score} outside [0, {_fmt(q.max_score)}]"
    if not q.on_grid(score):
        return f"score {score} not one of the allowed scores"
    if not _is_number(conf) or not 0 <= conf <= 1:
        return "confidence is not a number in [0, 1]"
    if not isinstance(fb, str):
        return "feedback is not a string"
    return None


def _is_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: float) -> str:
    return f"{x:g}"
