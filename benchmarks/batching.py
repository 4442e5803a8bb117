"""What packing students into token-budgeted requests saves, on real SAF answers.

Baseline: one request per student (what a naive grader sends). raygrade: students
packed by :func:`raygrade.planner.plan_batches` under the model's budgets. Both
are planned in the same run from the same answers, with the same prompt (system
prompt, question, reference answer, graded examples) and the same tokenizer, so
the ratios isolate the effect of packing: fewer requests (RPM) and fewer prompt
tokens (TPM, cost), because each request repeats the question block once.

    .venv/bin/python benchmarks/batching.py [--saf PATH] [--students-per-request 8]

Prints a table and writes ``benchmarks/out/batching.json``. Uses answer text as
pages (no rendering or OCR) so it runs in seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from raygrade.config import BatcherConfig, ProviderConfig, RaygradeArgs
from raygrade.datasets.saf import find_saf, load_split
from raygrade.datasets.sample_jobs import pick_examples
from raygrade.planner import JobPlanner
from raygrade.prompts import StudentWork
from raygrade.protocol import GradingJob, Question, Submission, TextPage
from raygrade.tokens import TiktokenCounter


def saf_text_job(root: Path, examples: int) -> GradingJob:
    import random

    rng = random.Random(0)
    train = {q.key: q for q in load_split(root, "training")}
    qs, subs = [], []
    for q in load_split(root, "unseen_answers"):
        qs.append(Question(id=q.key, prompt=q.text, reference_answer=q.reference or None, max_score=q.max_score,
                           examples=pick_examples(train.get(q.key), examples, rng)))
        for a in q.answers:
            subs.append(Submission(student_id=f"{q.key}:{a.id}", pages=[TextPage(text=a.response or "-")],
                                   question_ids=[q.key]))
    return GradingJob(assessment={"questions": qs}, submissions=subs)


def plan(job: GradingJob, students_per_request: int) -> dict:
    provider = ProviderConfig(base_url="http://unused", model="gpt-4o-mini", image_token_rule="gpt-4o-mini")
    args = RaygradeArgs(provider=provider, batcher=BatcherConfig(max_students_per_request=students_per_request))
    planner = JobPlanner(args, TiktokenCounter())
    works = [StudentWork(student_id=s.student_id, alias=f"s{i + 1}", pages=list(s.pages), page_indices=[0],
                         question_ids=list(s.question_ids or [])) for i, s in enumerate(job.submissions)]
    t0 = time.perf_counter()
    batches, errors = planner.batches("bench", job, works, vision=False)
    dt = time.perf_counter() - t0
    return {"students_per_request": students_per_request, "requests": len(batches),
            "prompt_tokens": sum(b.prompt_tokens_estimate for b in batches),
            "reserved_tokens": sum(b.prompt_tokens_estimate + b.max_tokens for b in batches),
            "rejected": len(errors), "plan_s": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saf")
    ap.add_argument("--examples", type=int, default=3)
    ap.add_argument("--students-per-request", type=int, default=8)
    a = ap.parse_args()
    root = find_saf(a.saf)
    if root is None:
        raise SystemExit("SAF not found: pass --saf PATH (see ../shared/data/saf)")
    job = saf_text_job(root, a.examples)
    base, packed = plan(job, 1), plan(job, a.students_per_request)
    print(f"{len(job.submissions)} SAF v1.0 English unseen answers, {len(job.assessment.questions)} questions, "
          f"{a.examples} graded examples per question; tokens by tiktoken ({TiktokenCounter().name})")
    print(f"{'plan':<24} {'requests':>9} {'prompt tok':>11} {'reserved tok':>13} {'plan ms':>8}")
    for name, r in (("one student / request", base), (f"packed (<= {a.students_per_request})", packed)):
        print(f"{name:<24} {r['requests']:>9} {r['prompt_tokens']:>11} {r['reserved_tokens']:>13} "
              f"{r['plan_s'] * 1000:>8.1f}")
    ratios = {k: packed[k] / base[k] for k in ("requests", "prompt_tokens", "reserved_tokens")}
    print("ratio packed/baseline: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "batching.json").write_text(json.dumps({"baseline": base, "packed": packed, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
