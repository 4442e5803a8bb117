"""Page images straight into a self-hosted vision model on CPU (slow, runs in CI).

The tiny Idefics3 model (:mod:`raygrade.engine.tiny_vlm`: SmolVLM's architecture on the
packaged SmolLM2 weights, a random vision tower) is deployed with ``ray.serve.llm`` inside
the raygrade application; a vision-mode job sends rendered answer pages to it (no OCR) and
gets structured grades back, and raygrade's image-token rule for the family matches the
engine's own count. The grades themselves are noise: this proves the path, not judgement.
"""

import asyncio
import base64
import uuid

import pytest
from support.engines import FEEDBACK_MAX_CHARS

from raygrade.cli import Client
from raygrade.config import ApiConfig, ProviderConfig, RaygradeArgs
from raygrade.protocol import GradingJob
from raygrade.selfhosted import ServedModelConfig


def vision_job(n: int = 2) -> GradingJob:
    from raygrade.datasets.render import render_pages

    pages = [render_pages("A router forwards packets between networks.", seed=i)[0] for i in range(n)]
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "What does a router do?", "max_score": 2,
                                      "reference_answer": "It forwards packets between networks."}]},
        "submissions": [{"student_id": f"s{i}", "pages": [{"type": "image", "data": base64.b64encode(p).decode()}]}
                        for i, p in enumerate(pages)],
        "options": {"reading_mode": "vision"}})


@pytest.mark.slow
def test_page_images_reach_a_self_hosted_vision_model(serve_url):
    from ray import serve

    from raygrade.app import build_app
    from raygrade.blobs import image_size
    from raygrade.engine.tiny_vlm import prepare_tiny_vlm
    from raygrade.planner import planner_for
    from raygrade.prompts import StudentWork, build_messages
    from raygrade.providers.base import ChatRequest
    from raygrade.providers.serve_llm import ServeLLMProvider
    from raygrade.tokens import image_tokens

    folder = str(prepare_tiny_vlm())
    model = ServedModelConfig(model_id="tiny-vlm", model_source=folder, device="cpu", engine_kwargs={
        "max_model_len": 4096, "limit_mm_per_prompt": {"image": 4}})
    provider = ProviderConfig(name="tiny-vlm", kind="serve_llm", model="tiny-vlm", api_key_env=None,
                              supports_vision=True, image_token_rule="idefics3", tokenizer="hf",
                              tokenizer_path=folder, context_window=4096, max_completion_tokens=512,
                              schema_bounds=True, check_on_start=False, feedback_max_chars=FEEDBACK_MAX_CHARS,
                              timeout_s=900.0)  # CPU decoding (≈ 7 tokens/s per stream), as the embedded model's
    args = RaygradeArgs(api=ApiConfig(auth="disabled"),
                        provider=provider, models=[model], namespace=f"rg-vlm-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="vision", route_prefix="/vision")
    try:
        job = vision_job()
        client = Client(f"{serve_url}/vision", timeout_s=120)
        st = client.wait(client.submit(job).id, timeout_s=900, poll_s=1.0, progress=False)
        res = client.results(st.id)
        assert st.state.value == "succeeded", [(e.type, e.message) for e in res.errors]
        assert {r.model for r in res.results} == {"tiny-vlm"} and len(res.results) == 2

        # The engine's count of one page image = raygrade's idefics3 rule for this model's processor.
        name = next(d for d in serve.status().applications["vision"].deployments if d.startswith("raygrade:"))
        chat = ServeLLMProvider(provider, serve.get_deployment_handle(name, app_name="vision"))
        page = job.submissions[0].pages[0]
        work = StudentWork(student_id="s0", alias="s1", pages=[page], page_indices=[0], question_ids=["q1"])
        text_only = StudentWork(student_id="s0", alias="s1", pages=[], page_indices=[], question_ids=["q1"])

        async def prompt_tokens(students):
            out = await chat.chat(ChatRequest(build_messages(job.assessment.questions, students), max_tokens=8,
                                              temperature=0))
            return out.usage.prompt_tokens

        with_image, without = asyncio.run(prompt_tokens([work])), asyncio.run(prompt_tokens([text_only]))
        w, h = image_size(page.image_bytes())
        assert image_tokens("idefics3", w, h, model_dir=folder) > 64  # tiles + the global image
        planner = planner_for(args, folder)  # the estimate the Batcher reserves: image rule + page header text
        cost = planner.student_cost
        estimate = cost(work, ("q1",)).prompt_tokens - cost(text_only, ("q1",)).prompt_tokens
        engine = with_image - without
        print(f"image page {w}x{h}: engine {engine} prompt tokens, raygrade estimate {estimate}; "
              f"prompts {with_image} with, {without} without the page")
        assert abs(engine - estimate) <= 0.02 * engine, (engine, estimate)
    finally:
        serve.delete("vision")
