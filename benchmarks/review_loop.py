"""How much a teacher's review improves a job: agreement with human grades against the share of
items reviewed, simulated with the human scores as the teacher.

The grader is the reference-similarity baseline on each question's score grid with a few graded
examples per question (``--examples``, as a teacher would give). For each share of items reviewed
(``--shares``) and each way of choosing them:

- ``expected_error+regrade`` and ``expected_error``: the items of largest expected error (as a
  share of the maximum; ``review_by="expected_error"``, the default), as the two below;
- ``confidence+regrade``: the least confident items, over ``--rounds`` rounds; after each round
  the reviewed answers join their question's graded examples (what ``POST /v1/jobs/{id}/regrade``
  does) and the question's unreviewed answers are regraded, so the next round's choice and the
  remaining grades use what the teacher decided;
- ``confidence``: the same items chosen once, without regrading (``review_by="confidence"``);
- ``random+regrade`` and ``random``: the same counts chosen at random.

A reviewed item takes the teacher's (human) score. Reported on every item of the split: the
per-question QWK mean (the headline, 95 % bootstrap interval over questions), pooled QWK and
exact agreement on the grid. ``--groups`` adds answer groups (:mod:`raygrade.answer_groups`):
the teacher scores whole groups, in order of least confident first, giving each group the
score most of its members deserve and correcting the members that deserve another (one action
each), until the share of items is covered; reported with the items graded per teacher action.
``--target 0.9`` adds a review target on exact agreement (``JobOptions.review_target``): the share
it picks, the agreement it expects from the confidences, and the agreement reached; ``--target-qwk
0.8`` the same for a target on the per-question mean QWK (expected from the grades' expected
errors, :func:`raygrade.review.qwk_target_cut`). ``--audit 0.1`` adds, for each exact target, a
grader whose confidences are ``--overconfidence`` times too confident in logit (as an LLM's
self-reported numbers often are) with a random audit sample (``review_audit_share``) reviewed
first: the target's choice from the raw confidences against the choice after the audits
recalibrate them (:mod:`raygrade.recalibration`), and the calibration error (ECE) of each.

    .venv/bin/python benchmarks/review_loop.py --version 2.0 --examples 8
    .venv/bin/python benchmarks/fidelity.py --review-loop --version 2.0     # the same, from fidelity
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raygrade.baseline.similarity import ReferenceSimilarityGrader, minilm_embedder
from raygrade.datasets.saf import SAFQuestion, find_saf, grid_step, load_test_train
from raygrade.datasets.sample_jobs import saf_question
from raygrade.evaluation import grid_agreement, per_question_qwk
from raygrade.protocol import GradedExample, Question
from raygrade.review import risk

Key = tuple[str, str]  # (question key, answer id)
STRATEGIES = ("expected_error+regrade", "expected_error", "confidence+regrade", "confidence", "random+regrade",
              "random")


class Simulation:
    """One dataset split graded by the baseline, with a simulated teacher (the human scores)."""

    def __init__(self, test: list[SAFQuestion], train: dict, embedder, *, examples: int, seed: int):
        self.test, self.grader = test, ReferenceSimilarityGrader(embedder)
        rng = random.Random(seed)
        self.questions: dict[str, Question] = {}
        for q in test:
            question = saf_question(q, train[q.key])
            if examples:
                question = question.model_copy(update={"examples": rng.sample(
                    question.examples, min(examples, len(question.examples)))})
            self.questions[q.key] = question
        self.human = {(q.key, a.id): a.score for q in test for a in q.answers}
        self.text = {(q.key, a.id): a.response or "" for q in test for a in q.answers}
        self.max = {q.key: q.max_score for q in test}
        self.steps = {q.key: grid_step([x.score for x in train[q.key].answers], q.max_score) or q.max_score / 2
                      for q in test}
        self.initial = self.grade({q.key: self.questions[q.key] for q in test}, set())

    def grade(self, questions: dict[str, Question], reviewed: set[Key]) -> dict[Key, tuple[float, float, float]]:
        """(score, confidence, expected error ÷ maximum) of every unreviewed answer of ``questions``."""
        out = {}
        for q in self.test:
            if q.key not in questions:
                continue
            keys = [(q.key, a.id) for a in q.answers if (q.key, a.id) not in reviewed]
            graded = self.grader.grade_answers(questions[q.key], [self.text[k] for k in keys])
            mx = questions[q.key].max_score
            out.update({k: (s, c, e / mx) for k, (s, c, _, e) in zip(keys, graded)})
        return out

    def with_examples(self, questions: dict[str, Question], keys: list[Key]) -> dict[str, Question]:
        """``questions`` with the reviewed answers ``keys`` added to their questions' examples."""
        out = dict(questions)
        for qk in {k[0] for k in keys}:
            new = [GradedExample(answer=self.text[k], score=self.human[k]) for k in keys if k[0] == qk]
            out[qk] = out[qk].model_copy(update={"examples": [*out[qk].examples, *new]})
        return out

    def run(self, strategy: str, share: float, rounds: int, seed: int) -> dict:
        """Review ``share`` of the items by ``strategy``; the agreement of the final scores."""
        rng = random.Random(seed)
        total = round(share * len(self.human))
        per_round = [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]
        regrade, by = strategy.endswith("+regrade"), strategy.split("+")[0]
        if not regrade:
            per_round = [total]
        grades, questions, reviewed = dict(self.initial), dict(self.questions), set()
        for n in per_round:
            open_keys = sorted(k for k in grades if k not in reviewed)
            if by in ("expected_error", "confidence"):
                pick = sorted(open_keys, key=lambda k: (-risk(grades[k][1], grades[k][2], by), k))[:n]
            else:
                pick = rng.sample(open_keys, min(n, len(open_keys)))
            reviewed.update(pick)
            if regrade and pick:
                questions = self.with_examples(questions, pick)
                touched = {k[0] for k in pick}
                grades.update(self.grade({qk: questions[qk] for qk in touched}, reviewed))
        final = {k: (self.human[k] if k in reviewed else grades[k][0]) for k in self.human}
        return self.agreement(final) | {"reviewed": len(reviewed), "teacher_actions": len(reviewed)}

    def run_groups(self, share: float, threshold: float) -> dict:
        """The teacher scores answer groups, least confident first, until ``share`` of items is covered."""
        from raygrade.answer_groups import answer_groups

        target = round(share * len(self.human))
        groups: list[list[Key]] = []
        for q in self.test:
            keys = [(q.key, a.id) for a in q.answers]
            for members in answer_groups([self.text[k] for k in keys], self.grader._embed, threshold=threshold):
                groups.append([keys[i] for i in members])
        groups.sort(key=lambda g: (sum(self.initial[k][1] for k in g) / len(g), g[0]))
        reviewed: dict[Key, float] = {}
        actions = 0
        for g in groups:
            if len(reviewed) >= target:
                break
            score = Counter(self.human[k] for k in g).most_common(1)[0][0]   # what most members deserve
            actions += 1 + sum(1 for k in g if self.human[k] != score)       # the group, then each correction
            reviewed.update({k: self.human[k] for k in g})
        final = {k: reviewed.get(k, self.initial[k][0]) for k in self.human}
        return self.agreement(final) | {"reviewed": len(reviewed), "teacher_actions": actions,
                                        "items_per_action": len(reviewed) / actions if actions else None}

    def run_target(self, value: float) -> dict:
        """``review_target: {metric: exact, value}`` as the store applies it to the first grades: the
        share it picks, the agreement it expects, and the agreement reached with the human scores."""
        from raygrade.review import target_cut

        keys = sorted(self.initial)
        picked, expected = target_cut([self.initial[k][1] for k in keys], value)
        reviewed = {keys[i] for i in picked}
        final = {k: (self.human[k] if k in reviewed else self.initial[k][0]) for k in self.human}
        return self.agreement(final) | {"target": value, "share": len(reviewed) / len(keys), "expected": expected,
                                        "reviewed": len(reviewed)}

    def run_target_qwk(self, value: float) -> dict:
        """``review_target: {metric: qwk, value}`` as the store applies it to the first grades."""
        from raygrade.review import TargetItem, expected_sq_error, qwk_target_cut

        keys = sorted(self.initial)
        items = [TargetItem(k[0], self.initial[k][0], expected_sq_error(
            self.initial[k][2] * self.max[k[0]], self.initial[k][1], self.steps[k[0]])) for k in keys]
        picked, expected = qwk_target_cut(items, value)
        reviewed = {keys[i] for i in picked}
        final = {k: (self.human[k] if k in reviewed else self.initial[k][0]) for k in self.human}
        return self.agreement(final) | {"metric": "qwk", "target": value, "share": len(reviewed) / len(keys),
                                        "expected": expected, "reviewed": len(reviewed)}

    def run_target_audited(self, value: float, share: float, overconfidence: float) -> dict:
        """An exact target for an overconfident grader (the baseline's confidences pushed out in
        logit), with ``share`` of the items audited first: raw against recalibrated confidences."""
        import math

        from raygrade.evaluation import expected_calibration_error
        from raygrade.recalibration import fit_recalibration, is_audit
        from raygrade.review import target_cut

        def distort(c: float) -> float:
            c = min(max(c, 1e-6), 1 - 1e-6)
            return 1 / (1 + math.exp(-overconfidence * math.log(c / (1 - c))))

        keys = sorted(self.initial)
        conf = {k: distort(self.initial[k][1]) for k in keys}
        right = {k: self.initial[k][0] == self.human[k] for k in keys}
        audit = {k for k in keys if is_audit("review-loop", k[0], k[1], share)}
        rest = [k for k in keys if k not in audit]
        recal = fit_recalibration([(conf[k], right[k]) for k in audit])
        out = {"target": value, "audit_share": share, "overconfidence": overconfidence, "audited": len(audit),
               "slope": recal.slope, "intercept": recal.intercept}
        for name, c in (("raw", conf), ("recalibrated", {k: recal.apply(conf[k]) for k in keys})):
            picked, expected = target_cut([c[k] for k in rest], value, right=len(audit))
            reviewed = audit | {rest[i] for i in picked}
            final = {k: (self.human[k] if k in reviewed else self.initial[k][0]) for k in self.human}
            out[name] = {"share": len(reviewed) / len(keys), "expected": expected,
                         "reached": self.agreement(final)["exact"],
                         "ece": expected_calibration_error([c[k] for k in rest], [right[k] for k in rest])}
        return out

    def agreement(self, final: dict[Key, float]) -> dict:
        rows = [(self.human[k], final[k], self.max[k[0]], self.steps[k[0]]) for k in self.human]
        by_q: dict[str, list] = {}
        for k, row in zip(self.human, rows):
            by_q.setdefault(k[0], []).append(row)
        pq = per_question_qwk(by_q, n_boot=200, seed=0)
        g = grid_agreement(rows)
        return {"qwk_per_question": {"value": pq["value"], "lo": pq["lo"], "hi": pq["hi"]}, "qwk_pooled": g.qwk,
                "exact": g.exact, "mae": g.mae}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saf", help="SAF's folder (default: ../shared/data/saf)")
    ap.add_argument("--version", default="2.0", choices=["1.0", "2.0"], help="SAF version (2.0: multi-point scores)")
    ap.add_argument("--split", default="unseen_answers", help="the split whose answers are graded")
    ap.add_argument("--examples", type=int, default=8, help="graded examples per question before any review")
    ap.add_argument("--shares", default="0,0.05,0.1,0.2,0.4", help="shares of items reviewed")
    ap.add_argument("--rounds", type=int, default=2, help="review rounds (regrading after each)")
    ap.add_argument("--groups", action="store_true", help="also the answer-group variant")
    ap.add_argument("--group-threshold", type=float, default=0.25,
                    help="cosine distance within which answers are grouped")
    ap.add_argument("--target", type=float, action="append", default=[],
                    help="also a review target on exact agreement (repeatable): the share chosen and reached")
    ap.add_argument("--target-qwk", type=float, action="append", default=[],
                    help="also a review target on the per-question mean QWK (repeatable)")
    ap.add_argument("--audit", type=float, default=0.0,
                    help="with --target: also an overconfident grader with this audit share (raw vs recalibrated)")
    ap.add_argument("--overconfidence", type=float, default=2.5,
                    help="how many times too confident (in logit) the audited grader is")
    ap.add_argument("--limit", type=int, help="a stratified slice of this many answers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "review_loop.json"))
    a = ap.parse_args(argv)
    root = find_saf(a.saf)
    if root is None:
        raise SystemExit("SAF not found: pass --saf PATH (see ../shared/data/saf)")
    t0 = time.perf_counter()
    test, train = load_test_train(root, a.split, a.limit, a.seed, a.version)
    sim = Simulation(test, train, minilm_embedder(), examples=a.examples, seed=a.seed)
    shares = [float(s) for s in a.shares.split(",")]
    report: dict = {"dataset": f"SAF v{a.version} {a.split}", "answers": len(sim.human), "examples": a.examples,
                    "rounds": a.rounds, "runs": {}}
    for strategy in STRATEGIES:
        report["runs"][strategy] = {str(s): sim.run(strategy, s, a.rounds, a.seed) for s in shares}
    if a.groups:
        report["runs"]["groups"] = {str(s): sim.run_groups(s, a.group_threshold) for s in shares}
    report["targets"] = [sim.run_target(v) for v in a.target] + [sim.run_target_qwk(v) for v in a.target_qwk]
    if a.audit:
        report["audited"] = [sim.run_target_audited(v, a.audit, a.overconfidence) for v in a.target]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    shares = list(next(iter(report["runs"].values())))
    head = "| strategy | " + " | ".join(f"{float(s):.0%} reviewed" for s in shares) + " |"
    lines = [f"{report['dataset']}: {report['answers']} answers, {report['examples']} examples per question, "
             f"{report['rounds']} rounds; per-question QWK mean [95 % CI] / pooled QWK / exact", "", head,
             "|---" * (len(shares) + 1) + "|"]
    for name, runs in report["runs"].items():
        cells = []
        for s in shares:
            r = runs[s]
            q = r["qwk_per_question"]
            head = f"{q['value']:.3f} [{q['lo']:.3f}, {q['hi']:.3f}]" if q["value"] is not None else "n/a"
            cell = f"{head} / {r['qwk_pooled']:.3f} / {r['exact']:.3f}"
            if r.get("items_per_action"):
                cell += f" ({r['items_per_action']:.1f} items/action)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for t in report.get("targets", []):
        if t.get("metric") == "qwk":
            q = t["qwk_per_question"]
            lines.append(f"\nreview_target qwk >= {t['target']:g}: reviews {t['share']:.1%} of the items "
                         f"(expected per-question QWK {t['expected']:.3f}); reached per-question QWK "
                         + (f"{q['value']:.3f} [{q['lo']:.3f}, {q['hi']:.3f}]" if q["value"] is not None else "n/a")
                         + f", exact {t['exact']:.3f}")
            continue
        lines.append(f"\nreview_target exact >= {t['target']:g}: reviews {t['share']:.1%} of the items "
                     f"(expected exact {t['expected']:.3f}); reached exact {t['exact']:.3f}, "
                     f"pooled QWK {t['qwk_pooled']:.3f}")
    for t in report.get("audited", []):
        lines.append(f"\nreview_target exact >= {t['target']:g}, a grader {t['overconfidence']:g}x too confident "
                     f"(logit), {t['audited']} items audited ({t['audit_share']:.0%}; fitted slope {t['slope']:.2f}, "
                     f"intercept {t['intercept']:.2f}):")
        for name in ("raw", "recalibrated"):
            r = t[name]
            lines.append(f"- {name}: ECE {r['ece']:.3f}; reviews {r['share']:.1%} "
                         f"(expected exact {r['expected']:.3f}), reached exact {r['reached']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
