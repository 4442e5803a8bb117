"""The review page in a real browser: Playwright driving Debian's Chromium (``.ci/run`` installs
the ``chromium`` package; ``$RAYGRADE_CHROMIUM`` names another build). An app with API keys on and
its own store grades two jobs with the reference-similarity baseline (scanned pages read by OCR,
and typed answers); a reviewer opens ``/review``, enters a key, sees the flagged items with the
student's page image, scores three of them and a group of similar answers by keyboard, and a
regrade of the question learns from those reviews; the CSV export has a gradebook's columns.

``RAYGRADE_REVIEW_SCREENSHOT=path`` keeps the screenshot (docs/img/review-page.png is made so).
"""

import base64
import io
import os
import shutil
import uuid
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image, ImageDraw

from raygrade.client import Client
from raygrade.config import ApiConfig, BatcherConfig, RaygradeArgs, StoreConfig, reference_similarity_provider
from raygrade.store import JobStore

CHROMIUM = os.environ.get("RAYGRADE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
RED = (220, 30, 30)
REVIEW_ANSWERS = ["A router forwards packets between networks.", "A router forwards packets between networks!",
                  "It forwards packets between different networks.",
                  "A router connects networks and forwards packets.", "It makes the wifi faster.",
                  "It makes wifi go faster.", "A cable.", "I don't know."]


def scan(student: int) -> bytes:
    """A page as a scanner makes one: white, ruled, with a red mark the screenshot test looks for."""
    img = Image.new("RGB", (600, 400), "white")
    d = ImageDraw.Draw(img)
    for y in range(60, 400, 40):
        d.line([(20, y), (580, y)], fill=(200, 200, 230))
    d.text((30, 20), f"Student {student}: a router forwards packets between networks", fill="black")
    d.rectangle([450, 300, 560, 370], fill=RED)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def review_app(serve_url, tmp_path_factory):
    from ray import serve

    from raygrade.app import build_app

    home = tmp_path_factory.mktemp("review")
    store_cfg = StoreConfig(url=f"sqlite:///{home}/jobs.db")
    args = RaygradeArgs(provider=reference_similarity_provider(), store=store_cfg,
                        api=ApiConfig(key_cache_s=0), batcher=BatcherConfig(max_students_per_request=4),
                        namespace=f"rg-review-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="review", route_prefix="/review-app")
    store = JobStore(store_cfg.url, blob_uri=str(home / "blobs"))
    keys = {t: store.create_key(t)[1] for t in ("school-a", "school-b")}
    url = f"{serve_url}/review-app"
    client = Client(url, api_key=keys["school-a"])
    router = {"id": "q1", "prompt": "What does a router do?", "max_score": 2, "score_step": 0.5,
              "reference_answer": "A router forwards packets between networks using their destination address.",
              "examples": [{"answer": "It forwards packets between networks by address.", "score": 2},
                           {"answer": "It connects networks.", "score": 1},
                           {"answer": "It is a cable.", "score": 0}]}
    job = {"assessment": {"questions": [router]},
           "submissions": [{"student_id": f"student-{i}", "pages": [
               {"type": "image", "data": base64.b64encode(scan(i)).decode()}]} for i in range(5)]
           + [{"student_id": "mallory", "pages": [{"type": "text", "text": "<img src=x onerror=\"window.pwned=1\">"}]}],
           "options": {"review_share": 0.5}}
    st = client.submit(job)
    answers = REVIEW_ANSWERS
    typed = {"assessment": {"questions": [{**router, "score_step": 1}]}, "options": {"review_share": 0.25},
             "submissions": [{"student_id": f"typed-{i}", "pages": [{"type": "text", "text": a}]}
                             for i, a in enumerate(answers)]}
    typed_st = client.submit(typed)
    for job_id in (st.id, typed_st.id):
        assert client.wait(job_id, timeout_s=180, poll_s=0.2).state.value == "succeeded"
    yield SimpleNamespace(url=url, keys=keys, job_id=st.id, typed_job_id=typed_st.id, client=client, store=store)
    store.close()
    serve.delete("review")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the review page in Chromium: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def signed_in(page, review_app, job_id: str, tenant: str = "school-a") -> list[str]:
    """``page`` at ``/review?job=job_id``, the tenant's key entered; returns the list the page's
    script errors go to."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{review_app.url}/review?job={job_id}")
    page.fill("#api-key", review_app.keys[tenant])
    page.click("#login button[type=submit]")
    return errors


def test_the_page_needs_no_key_but_its_data_does_and_it_cannot_be_framed(review_app):
    page = httpx.get(f"{review_app.url}/review", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert httpx.get(f"{review_app.url}/review/review.js", timeout=10).status_code == 200
    assert httpx.get(f"{review_app.url}/review/secrets.txt", timeout=10).status_code == 401  # not a public path
    assert httpx.get(f"{review_app.url}/v1/reviews", timeout=10).status_code == 401


def test_a_reviewer_scores_flagged_items_by_keyboard(review_app, browser, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{review_app.url}/review?job={review_app.job_id}")

    page.fill("#api-key", "rg_not-a-key")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error:has-text('not accepted')")
    page.fill("#api-key", review_app.keys["school-a"])
    page.click("#login button[type=submit]")
    page.wait_for_selector("#items li")
    items = page.locator("#items li")
    assert items.count() == 3 and page.inner_text("#progress") == "0 / 3 reviewed"

    # The student's page image is shown: decoded in the page, and visible in a screenshot (red mark);
    # what OCR read from it is shown too (the baseline grades the transcription).
    page.click("#items li:has-text('student-')")
    page.wait_for_selector("#transcription:has-text('router')")
    page.wait_for_function("() => { const i = document.querySelector('#pages img');"
                           " return i && i.complete && i.naturalWidth === 600; }")
    shot = tmp_path / "review.png"
    page.screenshot(path=str(shot))
    if os.environ.get("RAYGRADE_REVIEW_SCREENSHOT"):
        shutil.copy(shot, os.environ["RAYGRADE_REVIEW_SCREENSHOT"])
    pixels = Image.open(shot).convert("RGB").getdata()
    assert sum(1 for p in pixels if abs(p[0] - RED[0]) < 30 and p[1] < 80 and p[2] < 80) > 500

    reviewed = {}
    for action in ("1", "Enter", "comment"):     # 0.5 by key "1"; keep the model's; comment, then 2 by key "4"
        student = page.inner_text("#student")
        model = float(page.inner_text("#model-score"))
        if action == "comment":
            page.keyboard.press("c")
            page.keyboard.type("clear, complete answer")
            page.keyboard.press("Escape")
            page.keyboard.press("4")
            reviewed[student] = (2.0, "clear, complete answer")
        else:
            page.keyboard.press(action)
            reviewed[student] = (0.5 if action == "1" else model, None)
        page.wait_for_selector(f"#progress:has-text('{len(reviewed)} / 3 reviewed')")
    assert len(reviewed) == 3 and not errors

    results = {r.student_id: r for r in review_app.client.results(review_app.job_id).results}
    for student, (score, comment) in reviewed.items():
        r = results[student]
        assert (r.graded_by, r.score, r.review.comment) == ("teacher", score, comment)
    assert sum(r.graded_by == "teacher" for r in results.values()) == 3

    page.reload()          # the key stays for this tab…
    page.wait_for_selector("#empty:not([hidden])")   # nothing left to review
    assert page.is_hidden("#login")
    page.select_option("#filter", "")                # all: the three reviewed items
    page.wait_for_selector("#items li.done")
    assert page.locator("#items li.done").count() == 3
    # A student's text is shown as text, never run as HTML (mallory's item, reviewed over the API).
    mallory = results["mallory"]
    review_app.client.review(review_app.job_id, mallory.item_id, 0)
    page.select_option("#filter", "pending")
    page.select_option("#filter", "")
    page.click("#items li:has-text('mallory')")
    page.wait_for_selector("#pages pre")
    assert page.inner_text("#pages pre") == '<img src=x onerror="window.pwned=1">'
    assert page.locator("#pages img").count() == 0 and page.evaluate("() => window.pwned") is None
    other = context.browser.new_context().new_page()   # …and only this tab: a new session asks again
    other.goto(f"{review_app.url}/review")
    assert other.is_visible("#login")
    context.close()


def test_another_tenants_key_sees_no_items(review_app, browser):
    page = browser.new_page()
    signed_in(page, review_app, review_app.job_id, "school-b")
    page.wait_for_selector("#workspace:not([hidden])")
    page.wait_for_selector("#empty:not([hidden])")
    assert page.locator("#items li").count() == 0
    page.close()


def test_answer_groups_over_the_api_and_one_group_scored_by_keyboard(review_app, browser):
    """Similar typed answers share a group (MiniLM + clustering in the registry); the page's group
    mode scores a whole group with one key; another tenant cannot see or score the groups."""
    from raygrade.errors import NotFoundError

    client, job_id = review_app.client, review_app.typed_job_id
    groups = client.answer_groups(job_id, "q1").data
    assert sum(g.size for g in groups) == 8 and sorted(i for g in groups for i in g.item_ids) == sorted(
        r.item_id for r in client.results(job_id).results)
    near = next(g for g in groups if "typed-0" in g.student_ids)
    assert "typed-1" in near.student_ids and "typed-4" not in near.student_ids   # same answer, not another
    assert client.answer_groups(job_id, "q1").data == groups                      # stable
    other = Client(review_app.url, api_key=review_app.keys["school-b"])
    with pytest.raises(NotFoundError):
        other.answer_groups(job_id, "q1")
    with pytest.raises(NotFoundError):
        client.review_group(job_id, "q1", "group_999", 1)

    page = browser.new_page()
    errors = signed_in(page, review_app, job_id)
    page.wait_for_selector("#workspace:not([hidden])")
    page.select_option("#filter", "groups")
    try:
        page.wait_for_selector("#members li", timeout=60_000)
    except Exception:   # what the page showed, for the log
        raise AssertionError(f"no group shown; errors {errors}; page: {page.inner_html('main')[:2000]}") from None
    n_groups = len(groups)
    assert page.locator("#items li").count() == n_groups
    page.click(f"#items li >> nth={groups.index(near)}")
    page.wait_for_function("n => document.querySelectorAll('#members li').length === n", arg=near.size)
    page.keyboard.press("2")                      # the grid 0, 1, 2: score 2 for the whole group
    page.wait_for_selector(f"#progress:has-text('1 / {n_groups} groups')", timeout=60_000)
    after = {r.student_id: r for r in client.results(job_id).results}
    for student in near.student_ids:
        assert (after[student].graded_by, after[student].score) == ("teacher", 2.0)
    assert all(r.graded_by == "model" for s, r in after.items() if s not in near.student_ids)
    page.close()

    # The question is regraded with the group's answers as graded examples (the teacher's score).
    child = client.regrade(job_id, "q1")
    [question] = review_app.store.get_job(child.id).assessment.questions
    learned = {e.answer: e.score for e in question.examples[3:]}
    assert learned == {a: 2.0 for a in (REVIEW_ANSWERS[int(s.split("-")[1])] for s in near.student_ids)}
    assert client.wait(child.id, timeout_s=120, poll_s=0.2).state.value == "succeeded"
    regraded = {r.student_id: r for r in client.results(job_id).results}
    child_batches = {r.student_id: r.batch_id for r in client.results(child.id).results}
    assert set(child_batches) == set(after) - set(near.student_ids)
    assert all(regraded[s].batch_id == b for s, b in child_batches.items())

    # What a gradebook imports: one row per student, the final score, who gave it.
    import csv

    from raygrade.export import CSV_COLUMNS

    rows = list(csv.DictReader(io.StringIO(client.results_csv(job_id))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 8
    assert {r["student_id"] for r in rows if r["graded_by"] == "teacher"} == set(near.student_ids)


def test_the_packaged_sample_graded_by_the_baseline_is_reviewed_in_the_page(review_app, browser):
    """raygrade's own sample (its page images read by OCR, two questions on each page) graded by
    the baseline: the page lists the flagged half, shows a page and what OCR read, and a reviewer
    keeps one grade and changes another by keyboard."""
    from raygrade.datasets.sample_jobs import sample_job
    from raygrade.protocol import JobOptions

    st = review_app.client.submit(sample_job(JobOptions(review_share=0.5)))
    assert review_app.client.wait(st.id, timeout_s=180, poll_s=0.2).state.value == "succeeded"
    flagged = [r for r in review_app.client.results(st.id).results if r.needs_review]
    assert len(flagged) == 4
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors = signed_in(page, review_app, st.id)
    page.wait_for_selector("#items li")
    assert page.locator("#items li").count() == 4 and page.inner_text("#progress") == "0 / 4 reviewed"
    page.wait_for_function("() => { const i = document.querySelector('#pages img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    assert page.inner_text("#transcription").strip()
    first = page.inner_text("#student")
    page.keyboard.press("Enter")                       # keeps the model's score
    page.wait_for_selector("#progress:has-text('1 / 4 reviewed')")
    page.keyboard.press("0")                           # no credit
    page.wait_for_selector("#progress:has-text('2 / 4 reviewed')")
    context.close()
    assert not errors
    done = [r for r in review_app.client.results(st.id).results if r.graded_by == "teacher"]
    assert len(done) == 2 and first in {r.student_id for r in done}
    assert {r.score for r in done if r.model_score != r.score} <= {0.0}
