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
    d = {"assessment": {"questions": [{"id": "q1", "prompt": "Why?", "max_score": 2}]},
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
    (lambda d: d["submissions"][1]["pages"][0].update(data=base64.b64encode(b"GIF89a....").decode()), "PNG or JPEG"),
    (lambda d: d["submissions"].append({"student_id": "a", "pages": [{"type": "text", "text": "x"}]}), "duplicate"),
    (lambda d: d["submissions"][0].update(question_ids=["nope"]), "unknown question"),
    (lambda d: d["submissions"][0].update(pages=[]), "at least 1"),
    (lambda d: d["assessment"]["questions"][0].update(max_score=-1), "greater than 0"),
    (lambda d: d.update(surprise=1), "Extra inputs"),
    (lambda d: d.update(submissions=[]), "at least 1"),
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
