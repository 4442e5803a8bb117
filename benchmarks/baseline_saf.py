"""Agreement of the reference-similarity baseline with SAF's human grades.

For each SAF v1.0 English question, thresholds are fitted on the question's
*training* answers and the *unseen_answers* split is graded (answer text; the
image path adds OCR and is measured by the fidelity benchmark). Printed beside
the majority baseline ("always full marks") from the same run, and with word
overlap and embeddings alone, so each part's share is visible.

    .venv/bin/python benchmarks/baseline_saf.py [--saf PATH] [--split unseen_answers]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from raygrade.baseline.similarity import ReferenceSimilarityGrader, minilm_embedder
from raygrade.datasets.saf import find_saf, load_split
from raygrade.datasets.sample_jobs import saf_question
from raygrade.evaluation import agreement


def run(root: Path, split: str) -> dict:
    train = {q.key: q for q in load_split(root, "training")}
    test = [q for q in load_split(root, split) if q.key in train]
    embed = minilm_embedder()
    graders = {"baseline (w=0.75)": 0.75, "embedding only": 1.0, "word overlap only": 0.0}
    pairs: dict[str, list] = {k: [] for k in graders}
    pairs["always full marks"] = []
    t0 = time.perf_counter()
    for sq in test:
        tr = train[sq.key]
        q = saf_question(sq, tr)
        answers = [a.response for a in sq.answers]
        for name, w in graders.items():
            graded = ReferenceSimilarityGrader(embed, embedding_weight=w, scale="levels").grade_answers(q, answers)
            pairs[name] += [(a.score, s, sq.max_score) for a, (s, _, _, _) in zip(sq.answers, graded)]
        pairs["always full marks"] += [(a.score, sq.max_score, sq.max_score) for a in sq.answers]
    wall = time.perf_counter() - t0
    return {"answers": len(pairs["always full marks"]), "questions": len(test), "wall_s": wall,
            "agreement": {k: vars(agreement(v)) for k, v in pairs.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saf")
    ap.add_argument("--split", default="unseen_answers")
    a = ap.parse_args()
    root = find_saf(a.saf)
    if root is None:
        raise SystemExit("SAF not found: pass --saf PATH (see ../shared/data/saf)")
    r = run(root, a.split)
    print(f"SAF v1.0 English {a.split}: {r['answers']} answers, {r['questions']} questions; thresholds fitted on "
          f"the training split; {r['wall_s']:.1f}s")
    base = r["agreement"]["always full marks"]
    print(f"{'grader':<22} {'exact':>6} {'QWK':>6} {'MAE':>6} {'exact/majority':>15}")
    for name, ag in r["agreement"].items():
        ratio = ag["exact"] / base["exact"]
        print(f"{name:<22} {ag['exact']:>6.3f} {ag['qwk']:>6.3f} {ag['mae']:>6.3f} {ratio:>15.2f}")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "baseline_saf.json").write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
