"""``python -m raygrade.datasets``: write a regrade dataset from SAF or from an online job.

``python -m raygrade.datasets saf OUT [--images] [--split unseen_answers]``,
``python -m raygrade.datasets job JOB.json OUT [--results RESULTS.json | --results URL]`` and
``python -m raygrade.datasets csv FILE OUT --question-col … --reference-col … --answer-col …
--score-col … --max-score … --step …`` (or ``--mapping MAPPING.yaml``; :mod:`raygrade.datasets.csv_import`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from raygrade.datasets.convert import job_to_dataset, saf_to_dataset
from raygrade.protocol import GradingJob


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m raygrade.datasets", description="Write a regrade dataset "
                                 "(raygrade.bulk's layout) from SAF or from an online job.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("saf", help="SAF answers with human scores")
    s.add_argument("out")
    s.add_argument("--saf", help="SAF folder (default: ../shared/data/saf)")
    s.add_argument("--split", default="unseen_answers")
    s.add_argument("--lang", default="english")
    s.add_argument("--version", default="1.0")
    s.add_argument("--images", action="store_true", help="render answers as handwriting-style page images")
    s.add_argument("--limit", type=int)
    j = sub.add_parser("job", help="an online job's body and results")
    j.add_argument("job", help="the JSON body that was POSTed to /v1/jobs")
    j.add_argument("out")
    j.add_argument("--results", help="a file with the GET /v1/jobs/{id}/results body (or the demo's results "
                   "file), or that URL on a running app")
    c = sub.add_parser("csv", help="a CSV/TSV of graded answers (question, reference, answer, score)")
    c.add_argument("file")
    c.add_argument("out")
    c.add_argument("--mapping", help="a YAML file with the options below (flags win)")
    for opt in ("question", "reference", "answer", "score", "question-id", "student"):
        c.add_argument(f"--{opt}-col", help=f"the column with the {opt.replace('-', ' ')}"
                       + (" (optional)" if opt in ("question-id", "student") else ""))
    c.add_argument("--max-score", type=float, help="every question's maximum score (or --max-score-col)")
    c.add_argument("--step", type=float, help="every question's grid step (or --step-col)")
    c.add_argument("--max-score-col", help="a column with each row's question's maximum score")
    c.add_argument("--step-col", help="a column with each row's question's grid step")
    c.add_argument("--delimiter", help="the field delimiter: one character, or 'tab' (default: sniffed)")
    c.add_argument("--encoding", help="the file's encoding, e.g. latin-1 (default: utf-8)")
    c.add_argument("--examples-share", type=float, help="share of each question's answers used as examples (0.3)")
    c.add_argument("--max-examples", type=int)
    c.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    if a.cmd == "csv":
        import yaml

        from raygrade.datasets.csv_import import CsvMapping, csv_to_dataset

        fields = yaml.safe_load(Path(a.mapping).read_text()) if a.mapping else {}
        if a.delimiter in ("tab", "\\t"):
            a.delimiter = "\t"
        for name in CsvMapping.model_fields:
            if getattr(a, name, None) is not None:
                fields[name] = getattr(a, name)
        path = csv_to_dataset(a.file, a.out, CsvMapping.model_validate(fields))
    elif a.cmd == "saf":
        from raygrade.datasets.saf import find_saf

        root = find_saf(a.saf)
        if root is None:
            raise FileNotFoundError(2, "SAF dataset not found (pass --saf PATH)", a.saf or "../shared/data/saf")
        path = saf_to_dataset(root, a.out, split=a.split, lang=a.lang, version=a.version, images=a.images,
                              limit=a.limit)
    else:
        job = GradingJob.model_validate_json(Path(a.job).read_text())
        res = None
        if a.results and a.results.startswith(("http://", "https://")):
            import httpx

            r = httpx.get(a.results, timeout=120)
            r.raise_for_status()
            res = r.json()
        elif a.results:
            res = json.loads(Path(a.results).read_text())
        path = job_to_dataset(job, a.out, res)
    n = sum(pq.read_metadata(f).num_rows for f in sorted((Path(path) / "submissions").glob("*.parquet")))
    print(f"wrote {n} submissions to {path}")


if __name__ == "__main__":
    from raygrade._cli import run

    run(main, "python -m raygrade.datasets")
