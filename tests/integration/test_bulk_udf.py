"""BatchGradingUDF inside a real Ray Data pipeline against the fake server: every row comes
back, a failed batch as an error row (its block is not dropped), at bulk priority."""

import json
import uuid

from raygrade.batch import GradeBatch
from raygrade.prompts import StudentWork
from raygrade.protocol import Question, TextPage
from raygrade.testing.fake_openai import fake_provider_config

Q = [Question(id="q1", prompt="What does ARP resolve?", max_score=1, reference_answer="IP to MAC addresses")]


def batches(n):
    return [GradeBatch(batch_id=f"b{i}", job_id="regrade", questions=Q, prompt_tokens_estimate=200, max_tokens=200,
                       students=[StudentWork(student_id=f"st{i}", alias="s1", pages=[TextPage(text="MAC of an IP")],
                                             page_indices=[0], question_ids=["q1"])])
            for i in range(n)]


def test_failed_batches_become_error_rows_and_the_rest_is_graded(ray_cluster, fake):
    import ray
    from ray.data import ActorPoolStrategy

    from raygrade.bulk.udf import BatchGradingUDF
    from raygrade.ratelimit.actor import get_rate_limiter

    namespace = f"bulk-{uuid.uuid4().hex[:6]}"
    provider = fake_provider_config(fake.base_url, name="bulk", max_retries=0)
    fake.script.extend(["500"])  # whichever batch is sent first fails, without a retry
    ds = ray.data.from_items([{"batch": b.model_dump_json()} for b in batches(6)]).repartition(2)
    rows = ds.map_batches(BatchGradingUDF, fn_constructor_kwargs={"provider": provider.model_dump(),
                                                                  "namespace": namespace},
                          compute=ActorPoolStrategy(size=1), batch_size=3, num_cpus=0).take_all()
    assert sorted(r["batch_id"] for r in rows) == [f"b{i}" for i in range(6)]
    failed = [r for r in rows if r["error_type"]]
    assert [r["error_type"] for r in failed] == ["provider_error"]
    assert json.loads(failed[0]["errors"])[0]["student_ids"] == [failed[0]["batch_id"].replace("b", "st")]
    graded = [json.loads(r["results"]) for r in rows if not r["error_type"]]
    assert len(graded) == 5 and all(len(g) == 1 and g[0]["question_id"] == "q1" for g in graded)
    snap = ray.get(get_rate_limiter(namespace).snapshot.remote())["bulk/fake-grader"]
    assert snap["admitted_requests"] == 6 and snap["failures"] == 1
    ray.kill(get_rate_limiter(namespace), no_restart=True)
