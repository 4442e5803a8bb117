"""How closely raygrade's grades match human graders, per grader configuration and reading path.

One command grades a real dataset (SAF from ``../shared/data/saf`` or ``--saf``) with
several configurations in one run:

- ``baseline``: the reference-similarity grader on the question's score grid (a quantile map
  fitted on the training split's graded answers; ``--baseline-examples K`` keeps K of them);
- ``baseline-levels``: the earlier baseline, three levels from two fitted thresholds;
- ``local``: the embedded model (deployed here by Ray's LLM serving library, its OpenAI
  app on 127.0.0.1), few-shot prompts;
- ``endpoint``: any OpenAI-compatible endpoint (``--endpoint-url``, key from
  ``--endpoint-key-env``, ``--endpoint-model``; ``--endpoint-vision`` sends page images as they are).

Each is run on the answer **text** and on the rendered **image** pages (read by OCR for
text-only models), so the loss caused by reading is isolated. Reported per
configuration × path, on the rubric's own grid first (``--version 2.0``: SAF v2.0, scores in
eighths of a point up to 3.5): exact, within one grid step, QWK and MAE with bootstrap 95 %
intervals and the ECE of confidence as P(exact score); then on three levels (labelled so):
exact agreement, Cohen's κ and QWK with bootstrap 95 % intervals,
per-question QWK, invalid-output rate, time and estimated cost per 1,000 answers,
expected calibration error of the confidences, confusion matrices (PNG) and agreement
against coverage (PNG: the share of items
not sent to review, ordered by confidence). Writes ``fidelity.json`` and ``fidelity.md``.

    .venv/bin/python benchmarks/fidelity.py --configs baseline,local --paths text,image
    .venv/bin/python benchmarks/fidelity.py --limit 20 --configs baseline      # a quick slice
    .venv/bin/python benchmarks/fidelity.py --configs local --paths text --calibrate 200 --baseline-agreement

``--review-loop`` runs ``benchmarks/review_loop.py`` instead (agreement against the share of items a
teacher reviews, with regrading, at random, and by answer groups).

``--calibrate N`` fits each LLM configuration's confidence map (``raygrade.calibration``) on
N training-split answers graded by it, reports the ECE and coverage with the map applied
to the test answers, and writes the map for ``ProviderConfig.calibration_path``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import time
from pathlib import Path

from raygrade.baseline.similarity import ReferenceSimilarityGrader, minilm_embedder
from raygrade.bulk.report import ci, confusion_png, level_confusion
from raygrade.calibration import fit_calibration
from raygrade.config import ProviderConfig, RaygradeArgs, local_vllm_provider
from raygrade.datasets.render import render_pages
from raygrade.datasets.saf import SAFQuestion, find_saf, grid_step, load_test_train
from raygrade.datasets.sample_jobs import pick_examples, saf_question
from raygrade.evaluation import (
    agreement,
    agreement_with_ci,
    bootstrap_ci,
    coverage_curve,
    expected_calibration_error,
    grid_agreement,
    grid_agreement_with_ci,
    per_question_qwk,
    score_level,
)
from raygrade.graders import build_batch_grader
from raygrade.planner import JobPlanner
from raygrade.prompts import PROMPT_VERSION, StudentWork
from raygrade.protocol import ImagePage, Question, TextPage
from raygrade.ratelimit.limiter import RateLimiter
from raygrade.reading.ocr import OCRReader
from raygrade.review import error_share, risk, routing_curve
from raygrade.tokens import TiktokenCounter, counter_for

Item = tuple[str, str, float, float]  # question key, answer id, human score, max score


def read_pages(test: list[SAFQuestion], path: str) -> dict[tuple[str, str], list]:
    """Pages per answer: text as-is, or rendered images (OCR text cached alongside)."""
    pages = {}
    for q in test:
        for i, a in enumerate(q.answers):
            if path == "text":
                pages[(q.key, a.id)] = [TextPage(text=a.response or "")]
            else:
                pages[(q.key, a.id)] = [ImagePage(data=base64.b64encode(p).decode())
                                        for p in render_pages(a.response or "", seed=hash((q.key, i)) & 0xFFFF,
                                                              header=f"Q {q.key}")]
    return pages


def ocr(pages: dict, cache: dict, reader: OCRReader) -> dict:
    out = {}
    for key, ps in pages.items():
        if key not in cache:
            cache[key] = [TextPage(text=reader.read(p.image_bytes())) if isinstance(p, ImagePage) else p for p in ps]
        out[key] = cache[key]
    return out


def grade_baseline(test, train, pages, embedder, scale: str = "grid", examples: int = 0, seed: int = 0
                   ) -> tuple[dict, dict]:
    g = ReferenceSimilarityGrader(embedder, scale=scale)  # type: ignore[arg-type]
    grades, errors = {}, {}
    rng = random.Random(seed)
    for q in test:
        tr = train[q.key]
        question = saf_question(q, tr)
        if examples:  # a few graded answers only, as a teacher would give
            question = question.model_copy(update={"examples": rng.sample(question.examples,
                                                                          min(examples, len(question.examples)))})
        texts = ["\n".join(p.text for p in pages[(q.key, a.id)]) for a in q.answers]
        for a, (score, conf, _, error) in zip(q.answers, g.grade_answers(question, texts)):
            grades[(q.key, a.id)] = (score, conf, error_share(error, question.max_score))
    return grades, errors


def start_embedded_model() -> tuple[str, str]:
    """The embedded model on a local Ray, behind Ray's OpenAI-compatible LLM app on 127.0.0.1.

    Returns ``(base_url, model folder)``.
    """
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    from raygrade.config import LocalEngineConfig
    from raygrade.engine.local_vllm import embedded_model, prepare_model
    from raygrade.testing.ports import free_port

    eng = LocalEngineConfig()
    folder = prepare_model(eng)  # here, on the only node, before the replica starts
    # 4 logical CPUs: the OpenAI ingress (1 CPU) beside the model's bundle on a 2-core machine.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(build_openai_app({"llm_configs": [embedded_model(eng).llm_config()]}), name="fidelity-model",
              route_prefix="/")
    return f"http://127.0.0.1:{port}/v1", str(folder)


def grade_llm(test, train, pages, provider: ProviderConfig, base_url: str, examples: int, tokenizer_path, vision):
    args = RaygradeArgs(provider=provider)
    counter = counter_for(provider, tokenizer_path) if tokenizer_path else TiktokenCounter()
    planner = JobPlanner(args, counter)
    rng = random.Random(0)
    qs, works = [], []
    for q in test:
        qs.append(Question(id=q.key, prompt=q.text, reference_answer=q.reference or None, max_score=q.max_score,
                           examples=pick_examples(train.get(q.key), examples, rng)))
        for a in q.answers:
            works.append(StudentWork(student_id=f"{q.key}|{a.id}", alias=f"s{len(works) + 1}",
                                     pages=pages[(q.key, a.id)], page_indices=list(range(len(pages[(q.key, a.id)]))),
                                     question_ids=[q.key]))
    from raygrade.protocol import GradingJob, Submission

    job = GradingJob(assessment={"questions": qs}, submissions=[
        Submission(student_id=w.student_id, pages=[TextPage(text="-")], question_ids=w.question_ids) for w in works])
    batches, plan_errors = planner.batches("fidelity", job, works, vision)
    limiter = RateLimiter()
    limiter.configure(provider.bucket_key, provider.rate_limit.model_dump())
    # the product's factory, as Serve builds it, for the endpoint at base_url
    grader = build_batch_grader(provider.model_copy(update={"base_url": base_url}), limiter)

    async def run():
        sem = asyncio.Semaphore(args.batcher.max_concurrent_batches)

        async def one(b):
            async with sem:
                return await grader.grade(b)

        return await asyncio.gather(*(one(b) for b in batches))

    outs = asyncio.run(run())
    grades, errors, usage = {}, {}, [0, 0]
    for o in outs:
        usage[0] += o.usage.prompt_tokens
        usage[1] += o.usage.completion_tokens
        for r in o.results:
            k, aid = r.student_id.split("|", 1)
            grades[(k, aid)] = (r.score, r.confidence, r.confidence_source, error_share(r.expected_error, r.max_score))
        for e in o.errors:
            for sid in e.student_ids:
                errors[tuple(sid.split("|", 1))] = e.type
    for e in plan_errors:
        for sid in e.student_ids:
            errors[tuple(sid.split("|", 1))] = e.type
    return grades, errors, usage


def calibration_set(train: dict, test: list[SAFQuestion], n: int, seed: int) -> list[SAFQuestion]:
    """About ``n`` training answers to fit a confidence map on, spread over the test questions."""
    rng = random.Random(seed + 1)
    qs = [train[q.key] for q in test if q.key in train and train[q.key].answers]
    per = max(1, -(-n // max(1, len(qs))))
    out, budget = [], n
    for q in qs:
        if budget <= 0:
            break
        picked = tuple(rng.sample(q.answers, min(per, len(q.answers), budget)))
        out.append(SAFQuestion(q.key, q.text, q.reference, q.max_score, picked))
        budget -= len(picked)
    return out


def baseline_levels(qs: list[SAFQuestion], train: dict, pages: dict, embedder) -> dict:
    """The baseline's level (0/1/2) per (question, answer) on the same pages."""
    grades, _ = grade_baseline(qs, train, pages, embedder, scale="levels")
    maxes = {q.key: q.max_score for q in qs}
    return {k: score_level(v[0], maxes[k[0]]) for k, v in grades.items()}


def plot_coverage(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([c["coverage"] for c in curve], [c["qwk"] for c in curve], marker="o", label=name)
    ax.set_xlabel("coverage (share of items not sent to review)")
    ax.set_ylabel("QWK on covered items")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--review-loop" in argv:  # the simulated teacher (benchmarks/review_loop.py takes the other options)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks.review_loop import main as review_loop

        return review_loop([x for x in argv if x != "--review-loop"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--review-loop", action="store_true",
                    help="simulate a teacher reviewing a share of items (benchmarks/review_loop.py; its options)")
    ap.add_argument("--saf")
    ap.add_argument("--split", default="unseen_answers")
    ap.add_argument("--version", default="1.0", choices=["1.0", "2.0"], help="SAF version (2.0: multi-point scores)")
    ap.add_argument("--baseline-examples", type=int, default=0,
                    help="graded training answers per question the baseline fits on (0: all)")
    ap.add_argument("--limit", type=int, help="grade a stratified slice of this many answers")
    ap.add_argument("--configs", default="baseline,local",
                    help="comma list of baseline, baseline-levels, local (confidence from score logprobs), "
                    "local-selfconf (the model's own confidence), endpoint")
    ap.add_argument("--paths", default="text,image")
    ap.add_argument("--examples", type=int, default=3, help="graded training answers in LLM prompts")
    ap.add_argument("--endpoint-url")
    ap.add_argument("--endpoint-model")
    ap.add_argument("--endpoint-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--endpoint-vision", action="store_true")
    ap.add_argument("--price-in", type=float, default=0.0, help="endpoint USD per 1M input tokens")
    ap.add_argument("--price-out", type=float, default=0.0, help="endpoint USD per 1M output tokens")
    ap.add_argument("--calibrate", type=int, default=0, metavar="N",
                    help="for LLM configs: grade N training-split answers first, fit a confidence map on them "
                         "(written as calibration_<config>_<path>.json, usable as ProviderConfig.calibration_path) "
                         "and report the calibrated ECE and coverage on the test answers")
    ap.add_argument("--baseline-agreement", action="store_true",
                    help="with --calibrate: fit separate maps for grades that agree / disagree with the baseline")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "fidelity"))
    a = ap.parse_args(argv)
    root = find_saf(a.saf)
    if root is None:
        raise SystemExit("SAF not found: pass --saf PATH (see ../shared/data/saf)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    test, train = load_test_train(root, a.split, a.limit, a.seed, a.version)
    items = [(q.key, x.id, x.score, q.max_score) for q in test for x in q.answers]
    # Each question's grid: the step its training grades use (a property of the rubric).
    steps = {q.key: grid_step([x.score for x in train[q.key].answers], q.max_score) or q.max_score / 2 for q in test}
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    ocr_cache: dict = {}
    reader = OCRReader()
    embedder = minilm_embedder() if "baseline" in configs or a.baseline_agreement else None
    cal_qs = calibration_set(train, test, a.calibrate, a.seed) if a.calibrate else []
    server = None
    report: dict = {"dataset": f"SAF v{a.version}{' English' if a.version == '1.0' else ''} {a.split}",
                    "answers": len(items), "baseline_examples": a.baseline_examples or "all", "runs": {}}
    curves: dict = {}
    run_rows: dict = {}
    try:
        for cfg in configs:
            for path in paths:
                name = f"{cfg}/{path}"
                t0 = time.perf_counter()
                pages = read_pages(test, path)
                usage, price = [0, 0], (0.0, 0.0)
                vision = cfg == "endpoint" and a.endpoint_vision and path == "image"
                if path == "image" and not vision:
                    pages = ocr(pages, ocr_cache, reader)
                if cfg in ("baseline", "baseline-levels"):
                    grades, errors = grade_baseline(test, train, pages, embedder,
                                                    "grid" if cfg == "baseline" else "levels", a.baseline_examples,
                                                    a.seed)
                elif cfg in ("local", "local-selfconf"):
                    if server is None:
                        server = start_embedded_model()
                    # "local": confidence = P(score tokens); "local-selfconf": the model's own number.
                    prov = local_vllm_provider().model_copy(update={"score_logprobs": cfg == "local"})

                    def llm(qs, pg, prov=prov, server=server):
                        return grade_llm(qs, train, pg, prov, server[0], a.examples, server[1], False)
                    grades, errors, usage = llm(test, pages)
                elif cfg == "endpoint":
                    if not (a.endpoint_url and a.endpoint_model):
                        raise SystemExit("--configs endpoint needs --endpoint-url and --endpoint-model")
                    prov = ProviderConfig(name="endpoint", base_url=a.endpoint_url, api_key_env=a.endpoint_key_env,
                                          model=a.endpoint_model, supports_vision=a.endpoint_vision,
                                          image_token_rule="gpt-4o" if a.endpoint_vision else "none",
                                          price_per_mtok_input_usd=a.price_in, price_per_mtok_output_usd=a.price_out)

                    def llm(qs, pg, prov=prov, vision=vision):
                        return grade_llm(qs, train, pg, prov, a.endpoint_url, a.examples, None, vision)
                    grades, errors, usage = llm(test, pages)
                    price = (a.price_in, a.price_out)
                else:
                    raise SystemExit(f"unknown config {cfg!r}")
                wall = time.perf_counter() - t0
                pairs = [(h, grades[(k, i)][0], m) for k, i, h, m in items if (k, i) in grades]
                rows = [(h, grades[(k, i)][0], m, steps[k]) for k, i, h, m in items if (k, i) in grades]
                confs = [grades[(k, i)][1] for k, i, h, m in items if (k, i) in grades]
                shares = [grades[(k, i)][-1] for k, i, h, m in items if (k, i) in grades]
                per_q = {}
                by_question: dict[str, list] = {}
                for q in test:
                    qp = [(h, grades[(k, i)][0], m) for k, i, h, m in items if k == q.key and (k, i) in grades]
                    if qp:
                        ag = agreement(qp)
                        by_question[q.key] = [(h, gr, m, steps[q.key]) for h, gr, m in qp]
                        gq = grid_agreement_with_ci(by_question[q.key], n_boot=a.n_boot, seed=a.seed)
                        per_q[q.key] = {"n": ag.n, "exact": ag.exact, "qwk": ag.qwk, "grid_exact": gq["exact"],
                                        "grid_qwk": gq["qwk"], "grid_mae": gq["mae"]}
                hits = [abs(h - g) < 1e-6 for h, g, _, _ in rows]
                level_hits = [score_level(h, m) == score_level(g, m) for h, g, m in pairs]
                invalid = sum(1 for t in errors.values() if t == "output_parse_error")
                cost = (usage[0] * price[0] + usage[1] * price[1]) / 1e6
                run = {
                    "graded": len(pairs), "errors": len(errors), "invalid_output_rate": invalid / len(items),
                    # on the rubric's grid first; then three levels (none / partial / full)
                    "agreement_grid": grid_agreement_with_ci(rows, n_boot=a.n_boot, seed=a.seed) if rows else None,
                    # the headline: each question's QWK on its grid, averaged; interval over questions
                    "qwk_per_question": per_question_qwk(by_question, n_boot=a.n_boot, seed=a.seed),
                    "ece_grid": ece_with_ci(confs, hits, a.n_boot, a.seed) if rows else None,
                    "confidence_ties_share": max(confs.count(c) for c in set(confs)) / len(confs) if confs else None,
                    "agreement": agreement_with_ci(pairs, n_boot=a.n_boot, seed=a.seed) if pairs else None,
                    "per_question": per_q, "wall_s": wall, "s_per_1000_answers": wall / len(items) * 1000,
                    "tokens": {"prompt": usage[0], "completion": usage[1]},
                    "usd_per_1000_answers": cost / len(items) * 1000,
                    "coverage": coverage_curve(pairs, confs) if pairs else [],
                    # reviews routed by expected error (the default) and by confidence
                    "routing": {by: routing_curve(rows, [risk(c, e, by) for c, e in zip(confs, shares)])
                                for by in ("expected_error", "confidence")} if rows else None,
                    # ECE of confidence as P(level = the human's)
                    "ece": ece_with_ci(confs, level_hits, a.n_boot, a.seed) if pairs else None,
                }
                if cal_qs and cfg != "baseline":
                    run["calibrated"] = calibrate_run(cfg, path, llm, cal_qs, train, items, grades, test, pages,
                                                      embedder if a.baseline_agreement else None, reader, ocr_cache,
                                                      vision, out)
                    curves[f"{name} calibrated"] = run["calibrated"]["coverage"]
                report["runs"][name] = run
                run_rows[name] = {(k, i): (h, grades[(k, i)][0], m, steps[k]) for k, i, h, m in items
                                  if (k, i) in grades}
                if cfg == "baseline" and f"baseline-levels/{path}" in run_rows:
                    report[f"paired_{path}"] = paired_difference(run_rows[name], run_rows[f"baseline-levels/{path}"],
                                                                 a.n_boot, a.seed)
                elif cfg == "baseline-levels" and f"baseline/{path}" in run_rows:
                    report[f"paired_{path}"] = paired_difference(run_rows[f"baseline/{path}"], run_rows[name],
                                                                 a.n_boot, a.seed)
                if pairs:
                    confusion_png(level_confusion(pairs), out / f"confusion_{cfg}_{path}.png", ylabel="human",
                                  xlabel="raygrade", title=f"{name} (n={len(pairs)})")
                    curves[name] = run["coverage"]
                print(f"{name}: graded {len(pairs)}/{len(items)} in {wall:.0f}s", flush=True)
                write(report, curves, out)  # after every run, so a long run's early results are kept
    finally:
        if server is not None:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    print(markdown(report))
    return report


def ece_with_ci(confs: list[float], right: list[bool], n_boot: int, seed: int) -> dict:
    """ECE (:func:`expected_calibration_error`) with a percentile bootstrap 95 % interval over items."""
    items = list(zip(confs, right))
    lo, hi = bootstrap_ci(items, lambda xs: expected_calibration_error([c for c, _ in xs], [r for _, r in xs]),
                          n_boot=n_boot, seed=seed)
    return {"value": expected_calibration_error(confs, right), "lo": lo, "hi": hi}


def paired_difference(new: dict, old: dict, n_boot: int, seed: int) -> dict:
    """QWK and exact agreement on the grid, new baseline minus the three-level one, on the same
    items, with a paired percentile bootstrap 95 % interval (items resampled together)."""
    keys = sorted(set(new) & set(old))
    pairs = [(new[k], old[k]) for k in keys]
    out = {"n": len(pairs)}
    for metric in ("qwk", "exact"):
        def diff(ps, metric=metric):
            return (getattr(grid_agreement([x for x, _ in ps]), metric)
                    - getattr(grid_agreement([y for _, y in ps]), metric))
        lo, hi = bootstrap_ci(pairs, diff, n_boot=n_boot, seed=seed)  # type: ignore[arg-type]
        out[metric] = {"value": diff(pairs), "lo": lo, "hi": hi}
    return out


def calibrate_run(cfg, path, llm, cal_qs, train, items, grades, test, pages, embedder, reader, ocr_cache, vision,
                  out: Path) -> dict:
    """Fit a confidence map on ``cal_qs`` (training answers graded by the same config and path),
    apply it to the test grades; returns the calibrated ECE, coverage curve and the map's summary."""
    cal_pages = read_pages(cal_qs, path)
    if path == "image" and not vision:
        cal_pages = ocr(cal_pages, ocr_cache, reader)
    t0 = time.perf_counter()
    cal_grades, _, _ = llm(cal_qs, cal_pages)
    fit_s = time.perf_counter() - t0
    maxes = {q.key: q.max_score for q in cal_qs}
    humans = {(q.key, x.id): x.score for q in cal_qs for x in q.answers}
    sources = [v[2] for v in cal_grades.values()]
    source = max(set(sources), key=sources.count)
    keys = [k for k, v in cal_grades.items() if v[2] == source]
    right = [score_level(cal_grades[k][0], maxes[k[0]]) == score_level(humans[k], maxes[k[0]]) for k in keys]
    agrees_fit = agrees_test = None
    if embedder is not None:
        lv = baseline_levels(cal_qs, train, cal_pages, embedder)
        agrees_fit = [lv.get(k) == score_level(cal_grades[k][0], maxes[k[0]]) if k in lv else None for k in keys]
        lv_test = baseline_levels(test, train, pages, embedder)
        agrees_test = {(k, i): lv_test.get((k, i)) == score_level(grades[(k, i)][0], m)
                       for k, i, h, m in items if (k, i) in grades and (k, i) in lv_test}
    cal = fit_calibration([cal_grades[k][1] for k in keys], right, agrees=agrees_fit, provider=cfg, source=source,
                          prompt_version=PROMPT_VERSION)
    cal.save(out / f"calibration_{cfg}_{path}.json")
    pairs, confs = [], []
    for k, i, h, m in items:
        if (k, i) in grades:
            score, conf, src, _ = grades[(k, i)]
            pairs.append((h, score, m))
            confs.append(cal.calibrate(conf, (agrees_test or {}).get((k, i))) if src == source else conf)
    return {"fit_answers": len(keys), "fit_accuracy": sum(right) / max(1, len(right)), "fit_s": fit_s,
            "strata": sorted(cal.curves), "source": source,
            "ece": ece_with_ci(confs, [score_level(h, m) == score_level(g, m) for h, g, m in pairs], 1000, 0),
            "mean_confidence": sum(confs) / max(1, len(confs)),
            "coverage": coverage_curve(pairs, confs)}


def routing_markdown(report: dict) -> list[str]:
    """The routing table: agreement against the share of items reviewed, routed by expected error
    and by confidence, on the items kept and on the whole job once the routed items are reviewed."""
    lines = ["", "Review routing on the grid: share of items routed to review by expected error (share of the "
             "maximum) or by confidence (P(exact)); agreement on the items **kept** (not routed) and on **all** items "
             "once the routed ones carry the human's score (pooled QWK, MAE of the maximum):", "",
             "| config/path | share | by | kept exact | kept QWK | kept MAE | all exact | all QWK | all MAE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        for by, curve in (r.get("routing") or {}).items():
            for p in curve:
                k, a = p["kept"], p["after_review"]
                kept = f"{k['exact']:.3f} | {k['qwk']:.3f} | {k['mae']:.3f}" if k else "- | - | -"
                lines.append(f"| {name} | {p['share']:.1f} | {by} | {kept} | {a['exact']:.3f} | {a['qwk']:.3f} | "
                             f"{a['mae']:.3f} |")
    return lines


def write(report: dict, curves: dict, out: Path) -> None:
    if curves:
        plot_coverage(curves, out / "coverage.png")
    (out / "fidelity.json").write_text(json.dumps(report, indent=2))
    (out / "fidelity.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"# Fidelity: {report['dataset']}, {report['answers']} answers "
             f"(baseline examples per question: {report.get('baseline_examples', 'all')})", "",
             "On the rubric's grid (confidence = P(exact score)); 95 % percentile bootstrap intervals, over questions "
             "for the per-question mean, over answers otherwise:", "",
             "| config/path | QWK per question, mean | QWK pooled | exact | within one step | MAE (of max) | ECE "
             "| largest tie |", "|---|---|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        g = r.get("agreement_grid")
        if g:
            tie = f"{r['confidence_ties_share']:.2f}" if r.get("confidence_ties_share") is not None else "-"
            pq = r["qwk_per_question"]
            head = f"**{ci(pq)}** ({pq['questions']} q)" if pq.get("value") is not None else "-"
            lines.append(f"| {name} | {head} | {ci(g['qwk'])} | {ci(g['exact'])} | {ci(g['within_one_step'])} | "
                         f"{ci(g['mae'])} | {ci(r['ece_grid'])} | {tie} |")
    for path_key in [k for k in report if k.startswith("paired_")]:
        p = report[path_key]
        lines += ["", f"Grid baseline minus three-level baseline ({path_key[7:]}, the same {p['n']} answers, paired "
                  f"bootstrap 95 % CI): QWK {ci(p['qwk'])}, exact {ci(p['exact'])}"]
    lines += routing_markdown(report)
    lines += ["", "On three levels (none / partial / full; confidence = P(level right)), pooled:", "",
              "| config/path | graded | exact [95% CI] | Cohen's κ [95% CI] | QWK [95% CI] | invalid | ECE [95% CI] "
              "| s/1k answers | USD/1k answers |", "|---|---|---|---|---|---|---|---|---|"]

    for name, r in report["runs"].items():
        ag = r["agreement"]
        cells = [ci(ag["exact"]), ci(ag["kappa"]), ci(ag["qwk"])] if ag else ["-", "-", "-"]
        ece = ci(r["ece"]) if r.get("ece") is not None else "-"
        if r.get("calibrated"):
            ece += f" → {ci(r['calibrated']['ece'])} calibrated"
        lines.append(f"| {name} | {r['graded']} | {' | '.join(cells)} | {r['invalid_output_rate']:.3f} | {ece} | "
                     f"{r['s_per_1000_answers']:.0f} | {r['usd_per_1000_answers']:.2f} |")
    lines += ["", "Per-question QWK on the grid [95 % CI over its answers] (on three levels):", "",
              "| question | " + " | ".join(report["runs"]) + " |",
              "|---|" + "---|" * len(report["runs"])]
    keys = sorted({k for r in report["runs"].values() for k in r["per_question"]})

    def cell(x: dict) -> str:
        g = x["grid_qwk"]
        return f"{g['value']:.2f} [{g['lo']:.2f}, {g['hi']:.2f}] ({x['qwk']:.2f})"
    for k in keys:
        row = [cell(r["per_question"][k]) if k in r["per_question"] else "-" for r in report["runs"].values()]
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
