"""The regrade report: agreement with the reference scores, what moved, tokens and cost.

:func:`level_confusion` and :func:`confusion_png` are shared with ``benchmarks/fidelity.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.schema import fs_and_path
from raygrade.evaluation import (
    GridPair,
    agreement_with_ci,
    grid_agreement_with_ci,
    mean_with_ci,
    per_question_qwk,
    score_level,
)
from raygrade.prompts import PROMPT_VERSION
from raygrade.protocol import Assessment, Question


def reference_scores(cfg: RegradeConfig) -> tuple[str, dict[tuple[str, str], float]]:
    """(what we compare against, {(submission, question): score}): earlier results if given,
    else the dataset's ``human_scores``."""
    if cfg.compare:
        prev = pq.read_table(cfg.compare).to_pylist()
        return "previous grades", {(r["submission_id"], r["question_id"]): r["score"] for r in prev
                                   if r.get("score") is not None}
    fs, root = fs_and_path(cfg.input)
    import pyarrow.dataset as pads

    data = pads.dataset(f"{root}/submissions", filesystem=fs, format="parquet")
    if "human_scores" not in data.schema.names:
        return "nothing", {}
    t = data.to_table(columns=["submission_id", "human_scores"]).to_pylist()
    out = {}
    for r in t:
        for q, s in json.loads(r["human_scores"] or "{}").items():
            if s is not None:
                out[(str(r["submission_id"]), q)] = float(s)
    return "human scores", out


def build_report(table: pa.Table, cfg: RegradeConfig, assessment: Assessment, top: int = 20, *, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """What changed: agreement with the reference scores, biggest moves, tokens and cost.

    Agreement (:mod:`raygrade.evaluation`), every figure ``{"value", "lo", "hi"}`` with a 95 %
    percentile bootstrap interval (``n_boot`` resamples, seeded). On each question's own score
    grid first (``agreement_grid``): the headline ``qwk_per_question`` (the mean of the questions'
    QWKs, interval over questions), then over all items pooled: exact score, within one grid step,
    ``qwk`` (pooled, so labelled in the Markdown), MAE as a fraction of the maximum; each
    question's own figures in ``per_question``. Then on three levels (``agreement``, labelled
    so: exact on none/partial/full, within one point (``|new − old| ≤ 1`` in score units), QWK and
    Cohen's kappa on the levels, MAE); a 3×3 confusion matrix of levels (rows: reference,
    columns: new). Cost per 1,000 pages uses the provider's ``price_per_mtok_{input,output}_usd``.
    """
    rows = table.to_pylist()
    against, ref = reference_scores(cfg)
    steps = {q.id: grid_step_of(q) for q in assessment.questions}
    pairs, moves, grid_rows = [], [], []
    for r in rows:
        old = ref.get((r["submission_id"], r["question_id"]))
        if old is None or r["score"] is None:
            continue
        pairs.append((old, r["score"], r["max_score"]))
        grid_rows.append((r["question_id"], (old, r["score"], r["max_score"], steps.get(r["question_id"], 1.0))))
        moves.append({"submission_id": r["submission_id"], "question_id": r["question_id"], "old": old,
                      "new": r["score"], "delta": r["score"] - old, "confidence": r["confidence"]})
    graded = [r for r in rows if r["error_type"] is None]
    pages = {r["submission_id"]: r["pages"] for r in rows}
    n_pages = sum(pages.values())
    p_tok = sum(r["prompt_tokens"] or 0 for r in rows)
    c_tok = sum(r["completion_tokens"] or 0 for r in rows)
    prov = cfg.provider
    cost = p_tok / 1e6 * prov.price_per_mtok_input_usd + c_tok / 1e6 * prov.price_per_mtok_output_usd
    errors: dict[str, int] = {}
    warned: dict[str, set[str]] = {}
    for r in rows:
        if r["error_type"]:
            errors[r["error_type"]] = errors.get(r["error_type"], 0) + 1
        if r.get("warning"):
            warned.setdefault(r["warning"], set()).add(r["question_id"])
    report: dict[str, Any] = {
        "items": len(rows), "graded": len(graded), "errors": errors,
        "needs_review": sum(1 for r in rows if r["needs_review"]),
        "submissions": len(pages), "pages": n_pages, "model": prov.model, "prompt_version": PROMPT_VERSION,
        "prompt_tokens": p_tok, "completion_tokens": c_tok,
        "tokens_per_1k_pages": (p_tok + c_tok) / n_pages * 1000 if n_pages else None,
        "cost_usd": cost, "cost_per_1k_pages_usd": cost / n_pages * 1000 if n_pages else None,
        "compared_with": against, "compared_items": len(pairs),
        # problems with whole questions (JobWarning types), e.g. a degenerate reference answer
        "warnings": [{"type": t, "question_ids": sorted(q)} for t, q in sorted(warned.items())],
    }
    if pairs:
        by_question: dict[str, list[GridPair]] = {}
        for qid, row in grid_rows:
            by_question.setdefault(qid, []).append(row)
        report["agreement_grid"] = {**grid_agreement_with_ci([x for _, x in grid_rows], n_boot=n_boot, seed=seed),
                                    "qwk_per_question": per_question_qwk(by_question, n_boot=n_boot, seed=seed)}
        report["agreement_grid"]["qwk_per_question"].pop("per_question")  # listed below, with intervals
        report["per_question"] = {qid: grid_agreement_with_ci(r, n_boot=n_boot, seed=seed)
                                  for qid, r in sorted(by_question.items())}
        report["agreement"] = {
            **agreement_with_ci(pairs, n_boot=n_boot, seed=seed),
            "within_one_point": mean_with_ci([float(abs(n - o) <= 1 + 1e-9) for o, n, _ in pairs], n_boot=n_boot,
                                             seed=seed)}
        report["confusion"] = {"labels": LEVEL_LABELS, "rows_reference_cols_new": level_confusion(pairs)}
        moved = [m for m in moves if abs(m["delta"]) > 1e-9]  # items that did not move are not listed
        report["moved_most"] = sorted(moved, key=lambda m: (-abs(m["delta"]), m["submission_id"]))[:top]
    return report


#: What each warning type means, for the Markdown report.
WARNING_TEXT = {"degenerate_reference": "every graded example has the same similarity to the reference answer, so "
                                        "its grades are the examples' median at the lowest confidence, routed to "
                                        "review first: check the reference answer"}


def ci(m: dict[str, Any]) -> str:
    """``value [lo, hi]`` of one figure, three decimals."""
    return f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


def write_report(report: dict[str, Any], table: pa.Table, out_dir: Path) -> None:
    """``report.json``, ``report.md`` and (with a comparison) ``confusion.png`` in ``out_dir``.

    The PNG needs matplotlib (``pip install 'raygrade[plots]'``); without it the report
    says so and keeps the confusion matrix as a Markdown table: the grading already
    paid for is never lost to a missing plotting library."""
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Regrade report ({report['model']}, prompt {report['prompt_version']})", "",
             f"- items: {report['items']} ({report['graded']} graded, errors {report['errors'] or 'none'}), "
             f"{report['needs_review']} flagged for review",
             f"- submissions: {report['submissions']}, pages: {report['pages']}",
             f"- tokens: {report['prompt_tokens']} prompt + {report['completion_tokens']} completion"
             + (f" = {report['tokens_per_1k_pages']:.0f} per 1,000 pages" if report["tokens_per_1k_pages"] else ""),
             f"- estimated cost: {report['cost_usd']:.4f} USD"
             + (f" ({report['cost_per_1k_pages_usd']:.4f} per 1,000 pages)" if report["pages"] else "")]
    lines += [f"- **warning** {w['type']}: question{'s' if len(w['question_ids']) > 1 else ''} "
              f"{', '.join(w['question_ids'])} ({WARNING_TEXT.get(w['type'], 'see the job warnings')})"
              for w in report.get("warnings", [])]
    if "agreement" in report:
        a, g = report["agreement"], report["agreement_grid"]
        pq = g["qwk_per_question"]
        headline = (f"**{ci(pq)}** over {pq['questions']} questions" if pq["value"] is not None
                    else "- (no question has two graded items)")
        lines += ["", f"## Against {report['compared_with']} ({a['n']['value']} items)", "",
                  "95 % percentile bootstrap intervals in brackets (over questions for the per-question mean, "
                  "over items otherwise).", "",
                  f"QWK per question on its grid, mean: {headline}"
                  + (f" (left out, fewer than two items: {', '.join(pq['left_out'])})" if pq["left_out"] else ""),
                  "", "All items pooled, on each question's score grid:", "",
                  "| exact | within one step | QWK (pooled) | MAE (of max) |", "|---|---|---|---|",
                  f"| {ci(g['exact'])} | {ci(g['within_one_step'])} | {ci(g['qwk'])} | {ci(g['mae'])} |", "",
                  "On three levels (none / partial / full), pooled:", "",
                  "| exact | within one point | QWK | Cohen's κ | MAE (of max) |", "|---|---|---|---|---|",
                  f"| {ci(a['exact'])} | {ci(a['within_one_point'])} | {ci(a['qwk'])} | {ci(a['kappa'])} | "
                  f"{ci(a['mae'])} |", "", "Per question, on its grid:", "",
                  "| question | n | exact | within one step | QWK | MAE |", "|---|---|---|---|---|---|"]
        lines += [f"| {qid} | {x['n']['value']} | {ci(x['exact'])} | {ci(x['within_one_step'])} | {ci(x['qwk'])} | "
                  f"{ci(x['mae'])} |" for qid, x in report["per_question"].items()]
        lines += ["", "## Moved most", "", "| submission | question | old | new |", "|---|---|---|---|"]
        lines += [f"| {m['submission_id']} | {m['question_id']} | {m['old']:g} | {m['new']:g} |"
                  for m in report["moved_most"]]
        conf = report["confusion"]
        lines += ["", f"## Score levels (rows: {report['compared_with']}, columns: new)", "",
                  "| | " + " | ".join(conf["labels"]) + " |", "|---" * (len(conf["labels"]) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(str(n) for n in row) + " |"
                  for label, row in zip(conf["labels"], conf["rows_reference_cols_new"])]
        from raygrade._optional import has_module

        if has_module("matplotlib"):
            confusion_png(conf["rows_reference_cols_new"], out_dir / "confusion.png", ylabel=report["compared_with"])
        else:
            lines += ["", "(confusion.png not drawn: pip install 'raygrade[plots]')"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def grid_step_of(q: Question) -> float:
    """The question's grid step: its ``score_step``, else the smallest gap between the scores its
    grades may take (:func:`raygrade.baseline.grid.score_grid`)."""
    if q.score_step is not None:
        return q.score_step
    from raygrade.baseline.grid import score_grid

    grid = score_grid(q)
    return min((b - a for a, b in zip(grid, grid[1:])), default=q.max_score)


#: Names of the three score levels of :func:`raygrade.evaluation.score_level`.
LEVEL_LABELS = ["none", "partial", "full"]


def level_confusion(pairs: Iterable[tuple[float, float, float]]) -> list[list[int]]:
    """3×3 counts of score levels over ``(reference, new, max)`` triples: rows reference, columns new."""
    m = [[0, 0, 0] for _ in range(3)]
    for old, new, top in pairs:
        m[score_level(old, top)][score_level(new, top)] += 1
    return m


def confusion_png(matrix: list[list[int]], path: Path, *, ylabel: str, xlabel: str = "new grade",
                  title: str = "Score levels") -> None:
    """Draw a 3×3 score-level confusion matrix (:func:`level_confusion`) as a PNG.

    Raises:
        MissingDependencyError: matplotlib is not installed (``pip install 'raygrade[plots]'``).
    """
    from raygrade._optional import import_optional

    matplotlib = import_optional("matplotlib", "plots", "confusion-matrix plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center")
    ax.set_xticks(range(3), LEVEL_LABELS)
    ax.set_yticks(range(3), LEVEL_LABELS)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
