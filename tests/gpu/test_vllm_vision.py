"""Vision path on a GPU node: page images go to a vLLM vision-language model as they are.

Start the server first, e.g.
``vllm serve Qwen/Qwen2.5-VL-3B-Instruct --max-model-len 16384``, then
``RAYGRADE_GPU_VLLM_URL=http://127.0.0.1:8000/v1 RAYGRADE_GPU_VLLM_MODEL=Qwen/Qwen2.5-VL-3B-Instruct pytest tests/gpu``.
"""

import asyncio
import os

import pytest

from raygrade.config import ProviderConfig, RaygradeArgs
from raygrade.datasets.sample_jobs import sample_job
from raygrade.grading import BatchGrader
from raygrade.planner import JobPlanner
from raygrade.prompts import StudentWork
from raygrade.providers.openai_compat import OpenAICompatibleProvider
from raygrade.ratelimit.limiter import RateLimiter
from raygrade.tokens import TiktokenCounter

pytestmark = pytest.mark.gpu


def test_vision_model_grades_page_images():
    provider = ProviderConfig(name="vllm-gpu", base_url=os.environ["RAYGRADE_GPU_VLLM_URL"], api_key_env=None,
                              model=os.environ.get("RAYGRADE_GPU_VLLM_MODEL", "Qwen/Qwen2.5-VL-3B-Instruct"),
                              image_token_rule="qwen2-vl", context_window=16_384, max_completion_tokens=4096,
                              schema_bounds=True)
    args = RaygradeArgs(provider=provider)
    job = sample_job()
    works = [StudentWork(student_id=s.student_id, alias=f"s{i + 1}", pages=list(s.pages),
                         page_indices=list(range(len(s.pages))), question_ids=[q.id for q in job.questions_for(s)])
             for i, s in enumerate(job.submissions)]
    batches, errors = JobPlanner(args, TiktokenCounter()).batches("gpu", job, works, vision=True)
    assert not errors
    limiter = RateLimiter()
    limiter.configure(provider.bucket_key, provider.rate_limit.model_dump())
    grader = BatchGrader(OpenAICompatibleProvider(provider), limiter, bucket_key=provider.bucket_key,
                         schema_bounds=True)

    async def run():
        return await asyncio.gather(*(grader.grade(b) for b in batches))

    outs = asyncio.run(run())
    results = [r for o in outs for r in o.results]
    assert len(results) == 8 and not [e for o in outs for e in o.errors]
    by = {(r.student_id, r.question_id): r.score for r in results}
    # a vision model that reads the pages ranks the complete answer above the weak one
    assert by[("sample-01", "photosynthesis")] > by[("sample-02", "photosynthesis")]
