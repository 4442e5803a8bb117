"""Wire-protocol validation: clear errors naming the field."""

import base64
import io

import pytest
from PIL import Image
from pydantic import ValidationError

from raygrade.errors import RateLimitedError, RaygradeError
from raygrade.protocol import GradingJob, ImagePage, Question


def png_b64(w=20, h=10) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def job_dict(**over):
    d = {"options": {}, "assessment": {"questions": [{"id": "q1", "prompt": "Why?", "max_score": 2}]},
         "submissions": [{"student_id": "a", "pages": [{"type": "text", "text": "because"}]},
                         {"student_id": "b", "pages": [{"type": "image", "data": png_b64()}]}]}
    d.update(over)
    return d


def test_valid_job_parses():
    job = GradingJob.model_validate(job_dict())
    assert job.submissions[1].pages[0].media_type == "image/png"
    assert [q.id for q in job.questions_for(job.submissions[0])] == ["q1"]


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["submissions"][1]["pages"][0].update(data="not base64!!"), "base64"),
    (lambda d: d["submissions"][1]["pages"][0].update(data=base64.b64encode(b"GIF89a....").decode()),
     "(this is a GIF file)"),
    (lambda d: d["submissions"].append({"student_id": "a", "pages": [{"type": "text", "text": "x"}]}), "duplicate"),
    (lambda d: d["submissions"][0].update(question_ids=["nope"]), "unknown question"),
    (lambda d: d["submissions"][0].update(pages=[]), "at least 1"),
    (lambda d: d["assessment"]["questions"][0].update(max_score=-1), "greater than 0"),
    (lambda d: d.update(surprise=1), "Extra inputs"),
    (lambda d: d.update(submissions=[]), "at least 1"),
    # Strict numbers: no coercion from strings or booleans, finite only.
    (lambda d: d["assessment"]["questions"][0].update(max_score="2"), "valid number"),
    (lambda d: d["assessment"]["questions"][0].update(max_score=True), "valid number"),
    (lambda d: d["assessment"]["questions"][0].update(max_score=float("nan")), "finite number"),
    (lambda d: d["assessment"]["questions"][0].update(score_step=float("inf")), "finite number"),
    (lambda d: d["options"].update(temperature="0"), "valid number"),
    # A grid that would pass the maximum (0.6 on 1 → 1.2), or one of a million steps.
    (lambda d: d["assessment"]["questions"][0].update(max_score=1, score_step=0.6), "does not divide"),
    (lambda d: d["assessment"]["questions"][0].update(max_score=1000, score_step=0.0001), "the limit is"),
    # Below the grid's resolution (found by the API's fuzz test: max_score / 1e-306 overflowed, a 500),
    # or a step past the maximum.
    (lambda d: d["assessment"]["questions"][0].update(max_score=900, score_step=1.1e-306), "resolution"),
    (lambda d: d["assessment"]["questions"][0].update(max_score=5e-324), "resolution"),
    (lambda d: d["assessment"]["questions"][0].update(max_score=363.5, score_step=9.5e307), "exceeds max_score"),
    # Bounded strings, no NUL characters, no submission that answers nothing.
    (lambda d: d["options"].update(model="m" * 100_000), "at most 256"),
    (lambda d: d["submissions"][0]["pages"][0].update(text="a\x00b"), "NUL"),
    (lambda d: d["assessment"]["questions"][0].update(id="q\x00"), "NUL"),
    (lambda d: d["submissions"][0].update(question_ids=[]), "at least 1"),
    (lambda d: d["submissions"][0].update(question_ids=["q" * 200]), "at most 128"),
])
def test_invalid_jobs_name_the_problem(mutate, needle):
    d = job_dict()
    mutate(d)
    with pytest.raises(ValidationError) as ei:
        GradingJob.model_validate(d)
    assert needle in str(ei.value)


def test_score_grid_and_examples_checked():
    q = Question(id="q", prompt="p", max_score=1, score_step=0.25)
    assert q.allowed_scores() == [0, 0.25, 0.5, 0.75, 1]
    with pytest.raises(ValidationError):
        Question(id="q", prompt="p", max_score=1, examples=[{"answer": "x", "score": 2}])


def test_numbers_accept_integers_and_grids_that_divide():
    q = Question(id="q", prompt="p", max_score=3, score_step=0.1)
    assert len(q.allowed_scores()) == 31 and q.allowed_scores()[-1] == 3
    job = GradingJob.model_validate_json(
        '{"assessment": {"questions": [{"id": "q", "prompt": "p", "max_score": 2}]},'
        ' "submissions": [{"student_id": "a", "pages": [{"type": "text", "text": "x"}]}]}')
    assert job.assessment.questions[0].max_score == 2


def test_image_page_round_trip():
    p = ImagePage(data=png_b64(3, 4))
    assert Image.open(io.BytesIO(p.image_bytes())).size == (3, 4)


def test_errors_pickle_across_actor_boundaries_and_have_openai_bodies():
    import pickle

    e = RateLimitedError("slow down", provider_status=429, retry_after_s=2.5, code="rate_limit_exceeded")
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, RaygradeError) and e2.retry_after_s == 2.5 and e2.retryable
    body = e2.to_openai_body()["error"]
    assert body == {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}


def _png_bytes(w, h, mode="1") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_a_jobs_pages_decode_concurrently_and_the_first_bad_one_is_named(tmp_path):
    """Twelve distinct pages decode in the shared pool; a truncated JPEG (decoded at 1/8 scale,
    still every block) and a truncated PNG further on: the error names the first in job order;
    a job of good pages stores each once with its pixel size."""
    from raygrade.blobs import BlobStore, check_image, externalize
    from raygrade.errors import InvalidRequestError

    def jpeg(w, h):
        buf = io.BytesIO()
        Image.effect_noise((w, h), 60).convert("RGB").save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    good = [_png_bytes(40 + i, 30, "RGB") for i in range(6)] + [jpeg(64 + i, 48) for i in range(6)]
    bad_jpeg, bad_png = jpeg(400, 300)[:-600], _png_bytes(200, 200, "RGB")[:-40]
    with pytest.raises(ValueError, match="cannot be decoded"):
        check_image(bad_jpeg)
    assert check_image(good[-1]) == (69, 48)

    def job(pages):
        return GradingJob.model_validate(job_dict(submissions=[
            {"student_id": f"s{i}", "pages": [{"type": "image", "data": base64.b64encode(p).decode()}]}
            for i, p in enumerate(pages)]))

    blobs = BlobStore(str(tmp_path / "blobs"))
    with pytest.raises(InvalidRequestError) as ei:
        externalize(job([*good[:5], bad_jpeg, *good[5:], bad_png]), blobs)
    assert ei.value.param == "submissions[5].pages[0].data"
    stored = externalize(job([*good, good[0]]), blobs)
    sizes = [(p.width, p.height) for s in stored.submissions for p in s.pages]
    assert sizes[:12] == [Image.open(io.BytesIO(g)).size for g in good] and sizes[12] == sizes[0]
    assert stored.submissions[12].pages[0].sha256 == stored.submissions[0].pages[0].sha256


def test_pages_are_decoded_at_the_edge_naming_the_page(tmp_path):
    """A decompression bomb (30000 x 30000, one colour, ~100 KB) and a PNG whose header is followed
    by garbage are refused with 400s naming the page, before anything is stored; so are
    model-answer images, which stay inline."""
    from raygrade.blobs import BlobStore, check_image, externalize
    from raygrade.errors import InvalidRequestError

    bomb = _png_bytes(30_000, 30_000)
    assert len(bomb) < 200_000
    garbage = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    truncated = _png_bytes(200, 200, "RGB")[:-40]
    cases = ((bomb, "pixels"), (_png_bytes(9000, 8000), "the limit is 64000000"), (garbage, "cannot be read"),
             (truncated, "cannot be"))
    for data, needle in cases:
        with pytest.raises(ValueError, match=needle):
            check_image(data)
    blobs = BlobStore(str(tmp_path / "blobs"))
    d = job_dict()
    d["submissions"][1]["pages"].append({"type": "image", "data": base64.b64encode(bomb).decode()})
    with pytest.raises(InvalidRequestError) as ei:
        externalize(GradingJob.model_validate(d), blobs)
    assert ei.value.param == "submissions[1].pages[1].data" and "pixels" in ei.value.message
    d = job_dict()
    d["assessment"]["questions"][0]["model_answer_images"] = [
        {"type": "image", "data": base64.b64encode(garbage).decode()}]
    with pytest.raises(InvalidRequestError) as ei:
        externalize(GradingJob.model_validate(d), blobs)
    assert ei.value.param == "assessment.questions[0].model_answer_images[0].data"
    assert check_image(_png_bytes(30, 20, "RGB")) == (30, 20)


def test_a_body_that_is_not_json_is_named_by_line_and_column():
    """FastAPI's ``json_invalid`` error (a character offset) becomes line and column, param null."""
    import json

    from raygrade.serve.http_errors import validation_error_body

    doc = '{\n  "assessment": {"questions": []},\n  "submissions": [,]\n}'
    with pytest.raises(json.JSONDecodeError) as err:
        json.loads(doc)
    e = err.value
    body = validation_error_body([{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                                   "input": {}, "ctx": {"error": e.msg}}], doc)["error"]
    assert body["param"] is None and body["type"] == "invalid_request_error"
    assert f"line {e.lineno}, column {e.colno}" in body["message"] and "Expecting value" in body["message"]
    field = validation_error_body([{"type": "missing", "loc": ("body", "submissions", 0, "pages"),
                                    "msg": "Field required"}])["error"]
    assert field["param"] == "submissions[0].pages" and field["message"] == "submissions[0].pages: Field required"
