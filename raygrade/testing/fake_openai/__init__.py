"""A fake OpenAI-compatible chat server for tests and benchmarks (127.0.0.1 only).

It behaves like the hosted API where raygrade depends on it:

- ``POST /v1/chat/completions`` answers with a ``chat.completion`` object, a
  ``usage`` block, and ``x-request-id`` / ``openai-processing-ms`` /
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers.
- Prompt tokens are counted like the real API: tiktoken on the text parts, 3 per
  message plus 3 to prime the reply (OpenAI cookbook, "How to count tokens with
  tiktoken"), and GPT-4o tile tokens for each image from its pixel size.
- With ``response_format={"type": "json_schema"}`` the content is a JSON
  instance of the schema (so graders get well-formed grades).
- RPM and TPM are enforced over a **sliding 60-second window** (or a shorter
  ``window_s``, allowing ``rpm·window_s/60`` per window, as Azure OpenAI does; the
  ``x-ratelimit-*`` headers then speak in the window's units): a request is
  charged input + ``max_tokens`` when admitted, and the charge drops to the
  actual ``usage`` when it completes (``refund_unused``). A request that would
  take any trailing minute over a limit gets 429 with an OpenAI error body
  (``type: "requests"`` or ``"tokens"``), ``retry-after`` / ``retry-after-ms``
  (when it would fit) and the rate-limit headers; it is not charged.
- Latency: ``latency_s`` per request plus ``latency_per_token_s`` per completion token.
- Faults, scripted per request (``script``, for deterministic tests) or drawn at
  ``fault_rates`` (seeded): ``"429"``, ``"500"``, ``"malformed"`` (not JSON),
  ``"out_of_range"`` (a score above the maximum), ``"truncated"`` (cut JSON,
  ``finish_reason="length"``), ``"refusal"``.
- Every request, admitted or rejected, is recorded in ``log`` for auditing
  (:func:`audit_windows` checks that no minute went over the limits).

Run standalone: ``python -m raygrade.testing.fake_openai --port 8100 --tpm 200000``.
"""

from __future__ import annotations

from raygrade.testing.fake_openai.batch_api import FakeBatchAPI
from raygrade.testing.fake_openai.content import estimate_prompt_tokens, schema_instance
from raygrade.testing.fake_openai.process import FakeOpenAIProcess, fake_provider_config
from raygrade.testing.fake_openai.records import FAULTS, WINDOW_S, RequestRecord, audit_windows
from raygrade.testing.fake_openai.server import FakeOpenAIServer

__all__ = ["FAULTS", "WINDOW_S", "FakeBatchAPI", "FakeOpenAIProcess", "FakeOpenAIServer", "RequestRecord",
           "audit_windows", "estimate_prompt_tokens", "fake_provider_config", "schema_instance"]
