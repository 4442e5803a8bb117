"""Fit the baseline's pooled confidence map (``raygrade/data/baseline_grid_calibration.json``).

Every question of SAF's *training* splits (v1.0 English and v2.0; the test splits are never
read) is graded leave-one-out by the grid baseline (:mod:`raygrade.baseline.grid`): each graded
answer by the quantile map of the question's other answers. An isotonic regression of "the grid
score equals the human's" on the grade's distance to the nearest grid boundary, pooled over
all questions, is the map; the pooled hit rate is what each question's own leave-one-out rate
is shrunk towards. The leave-one-out outcomes themselves (raw score fraction, the human's
fraction) are kept as ``outcomes``: the pooled part of each grade's distribution over the grid
(:func:`raygrade.baseline.grid.grade_distribution`, what its expected error comes from). Prints
the map and writes the JSON.

Run: ``.venv/bin/python benchmarks/baseline_grid_calibration.py [--saf PATH] [--write]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raygrade.baseline.grid import (  # noqa: E402
    CALIBRATION_FILE,
    fit_pooled_calibration,
    loo_fractions,
    loo_records,
    score_grid,
)
from raygrade.baseline.similarity import ReferenceSimilarityGrader, minilm_embedder  # noqa: E402
from raygrade.datasets.saf import find_saf, load_split  # noqa: E402
from raygrade.datasets.sample_jobs import saf_question  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saf")
    ap.add_argument("--write", action="store_true", help="write raygrade/data/" + CALIBRATION_FILE)
    a = ap.parse_args()
    root = find_saf(a.saf)
    if root is None:
        raise SystemExit("SAF not found: pass --saf PATH")
    grader = ReferenceSimilarityGrader(minilm_embedder())
    records, outcomes = [], []
    for version in ("1.0", "2.0"):
        for q in load_split(root, "training", version=version):
            question = saf_question(q, q)  # its own training answers as the examples
            if not question.reference_answer or len(question.examples) < 2:
                continue
            ex = question.examples
            sims = [s.combined for s in grader.similarities([e.answer for e in ex], question.reference_answer)]
            loo = loo_fractions(sims, [e.score / question.max_score for e in ex])
            records += loo_records(loo, question.max_score, score_grid(question))
            outcomes += loo
    doc = {"fitted_on": "SAF v1.0 English + v2.0 training splits, leave-one-out per question",
           **fit_pooled_calibration(records),
           "outcomes": {"raw": [round(r, 4) for r, _ in outcomes], "human": [round(y, 4) for _, y in outcomes]}}
    print(json.dumps({k: v for k, v in doc.items() if k != "outcomes"}, indent=1))
    if a.write:
        path = Path(__file__).resolve().parent.parent / "raygrade" / "data" / CALIBRATION_FILE
        path.write_text(json.dumps({k: v for k, v in doc.items() if k != "outcomes"}, indent=1)[:-2]
                        + ',\n "outcomes": ' + json.dumps(doc["outcomes"], separators=(",", ":")) + "\n}\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
