"""The provider side of ``mode: batch-api``: how one provider's batch API is called.

:class:`~raygrade.bulk.batch_api.BatchApiRun` plans, keeps the exactly-once state, polls and
collects; a :class:`BatchBackend` turns a planned request into the provider's request line,
submits a part (adopting what a killed driver had already made), reads a batch's status and
its answers. Three backends:

- :class:`OpenAIBatches`: OpenAI's Batch API (https://platform.openai.com/docs/guides/batch):
  a JSONL file uploaded with ``purpose="batch"``, then a batch over it (``/v1/chat/completions``,
  ``24h``); output and error files by ``custom_id``. A killed driver's file is found by its
  name (which carries its SHA-256), its batch by its input file. vLLM's offline batch runner
  (:mod:`raygrade.bulk.vllm_batch`) stands in for the same client.
- :class:`~raygrade.providers.gemini_batches.GeminiBatches`: Gemini's batch mode (https://ai.google.dev/gemini-api/docs/batch-mode):
  inline requests (``batches.create(src=[...])``, at most 20 MB per batch, so parts are cut at
  18 MB of request lines; input files via the Files API are not used), each carrying its
  ``custom_id`` as ``metadata.key``; answers as ``dest.inlined_responses`` once the job has
  succeeded. A killed driver's job is found by its ``display_name`` (the part's name and the
  SHA-256 of its requests). An expired, cancelled or failed job's requests without an answer
  are typed ``batch_expired``, ``batch_cancelled`` or ``provider_error``.
- :class:`~raygrade.providers.anthropic_batches.AnthropicBatches`: Anthropic's Message Batches
  (https://docs.anthropic.com/en/docs/build-with-claude/batch-processing): the requests in the
  body of one call (at most 100,000 requests and 256 MB), ``custom_id`` s of 1–64 characters
  from ``[A-Za-z0-9_-]``, results as JSONL by ``custom_id`` once ``processing_status`` is
  ``ended``. A batch carries no metadata, so a killed driver's batch is found by its creation
  time (after the intent was recorded) and its request count; a wrong adoption cannot lose an
  item: answers whose ``custom_id`` is not the part's are ignored, and the part's requests
  without an answer go to the next round (``batch_missing``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from raygrade.config import ProviderConfig
from raygrade.providers.base import ChatRequest, ChatResult

logger = logging.getLogger(__name__)

#: Error types of items worth another submission.
RETRYABLE = frozenset({"output_parse_error", "batch_expired", "batch_cancelled", "provider_error", "batch_missing"})


@dataclasses.dataclass
class BatchView:
    """A batch's state as the run needs it.

    Attributes:
        status: The provider's own status word (kept in the run's state and report).
        terminal: Processing has ended: the answers can be read.
        counts: ``{"total", "completed", "failed"}`` requests so far, when the provider says.
        resubmit: The batch failed before running any request (over a queue limit, or its
            runner was lost): the same part is submitted again later.
        raw: The provider's batch object (what :meth:`BatchBackend.answers` reads).
    """

    status: str
    terminal: bool
    counts: dict[str, int] | None = None
    resubmit: bool = False
    raw: Any = None


class BatchBackend(Protocol):
    """One provider's batch API (see the module's description).

    Attributes:
        max_part_bytes: The most bytes of request lines one batch may carry (the run cuts parts
            at the lower of this and ``batch_api.max_file_bytes``).
    """

    max_part_bytes: int

    def custom_id(self, batch_id: str) -> str:
        """The request's ``custom_id`` for raygrade's ``batch_id`` (deterministic)."""

    def request_line(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        """One line of the part's request file (a JSON object)."""

    def submit(self, part: dict[str, Any], data: bytes, save: Callable[[], None], taken: set[str]) -> None:
        """Make ``part``'s batch from its request file's bytes ``data``, setting ``part["batch_id"]``;
        ``save()`` is called after each intent is recorded in ``part["status"]``, and a part left in
        an intent by a killed driver adopts what that driver made instead of making it again
        (never one of ``taken``, the batches of the run's other parts)."""

    def retrieve(self, batch_id: str) -> BatchView:
        """The batch's state now."""

    def cancel(self, batch_id: str) -> None:
        """Ask the provider to stop the batch (its unrun requests end cancelled)."""

    def answers(self, part: dict[str, Any], batch: BatchView, folder: Path) -> dict[str, dict[str, Any]]:
        """The ended batch's answer lines by ``custom_id`` (downloaded once into ``folder``)."""

    def reply(self, line: dict[str, Any], model: str) -> ChatResult | tuple[str, str]:
        """One answer line: the model's answer, or ``(error type, message)`` for a request that
        ran into an error, expired or was cancelled."""


def cached_jsonl(path: Path, fetch: Callable[[], bytes] | None) -> dict[str, dict[str, Any]]:
    """JSONL lines by ``custom_id`` from ``path``, first written from ``fetch()`` when missing."""
    if fetch is not None and not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(fetch())
        os.replace(tmp, path)
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return {x["custom_id"]: x for x in lines}


# -- OpenAI --------------------------------------------------------------------------------------
class OpenAIBatches:
    """OpenAI's Batch API through an ``openai.OpenAI`` client (or vLLM's batch runner, which has
    the same ``files``/``batches`` surface).

    Args:
        provider: The provider (an OpenAI-compatible endpoint with a Batch API).
        client: The client (default: one for ``provider``: its ``base_url`` and key).
    """

    max_part_bytes = 200 * 1000 * 1000  # an input file
    #: Error codes of a failed batch none of whose requests ran.
    RESUBMIT_CODES = frozenset({"token_limit_exceeded", "runner_lost"})

    def __init__(self, provider: ProviderConfig, client: Any = None):
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=provider.base_url, api_key=provider.api_key().get_secret_value(),
                            max_retries=5, timeout=120)
        self.provider, self.client = provider, client

    def custom_id(self, batch_id: str) -> str:
        return batch_id

    def request_line(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        from raygrade.providers.openai_compat import chat_request

        body = chat_request(self.provider, request) | (self.provider.extra_body or {})
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    @staticmethod
    def _filename(part: dict[str, Any]) -> str:
        return f"raygrade-{part['name']}-{part['sha256'][:16]}.jsonl"

    def submit(self, part: dict[str, Any], data: bytes, save: Callable[[], None], taken: set[str]) -> None:
        if part["file_id"] is None:
            if part["status"] == "uploading":  # a kill after the intent: was the file made?
                name = self._filename(part)
                part["file_id"] = next((f.id for f in self.client.files.list(purpose="batch")
                                        if f.filename == name), None)
            if part["file_id"] is None:
                part["status"] = "uploading"
                save()
                part["file_id"] = self.client.files.create(file=(self._filename(part), data), purpose="batch").id
            part["status"] = "uploaded"
            save()
        if part["status"] == "creating":  # a kill after the intent: was the batch made?
            part["batch_id"] = next((b.id for b in self.client.batches.list(limit=100)
                                     if b.input_file_id == part["file_id"]), None)
        if part["batch_id"] is None:
            part["status"] = "creating"
            save()
            part["batch_id"] = self.client.batches.create(
                input_file_id=part["file_id"], endpoint="/v1/chat/completions", completion_window="24h",
                metadata={"raygrade_part": part["name"]}).id

    def retrieve(self, batch_id: str) -> BatchView:
        b = self.client.batches.retrieve(batch_id)
        errors = getattr(b.errors, "data", None) or []
        resubmit = b.status == "failed" and any(getattr(e, "code", None) in self.RESUBMIT_CODES for e in errors)
        return BatchView(status=b.status, terminal=b.status in ("completed", "failed", "expired", "cancelled"),
                         counts=b.request_counts.model_dump() if b.request_counts is not None else None,
                         resubmit=resubmit, raw=b)

    def cancel(self, batch_id: str) -> None:
        self.client.batches.cancel(batch_id)

    def answers(self, part: dict[str, Any], batch: BatchView, folder: Path) -> dict[str, dict[str, Any]]:
        def fetch(file_id: str | None) -> Callable[[], bytes] | None:
            return None if file_id is None else (lambda: self.client.files.content(file_id).read())

        name = part["name"]
        out = cached_jsonl(folder / f"{name}.output.jsonl", fetch(batch.raw.output_file_id))
        errors = cached_jsonl(folder / f"{name}.errors.jsonl", fetch(batch.raw.error_file_id))
        return out | {k: v for k, v in errors.items() if k not in out}

    def reply(self, line: dict[str, Any], model: str) -> ChatResult | tuple[str, str]:
        from openai.types.chat import ChatCompletion

        from raygrade.providers.openai_compat import chat_result

        response = line.get("response") or {}
        if response.get("status_code") == 200 and not line.get("error"):
            return chat_result(ChatCompletion.model_validate(response["body"]), {}, model)
        if line.get("error"):
            code = str(line["error"].get("code") or "batch_error")
            return (code if code in RETRYABLE else "provider_error"), str(line["error"].get("message") or code)[:300]
        body = response.get("body") or {}
        message = ((body.get("error") or {}).get("message") if isinstance(body, dict) else None) \
            or f"HTTP {response.get('status_code')}"
        return "provider_error", f"HTTP {response.get('status_code')}: {message}"[:300]
