"""Anthropic's Message Batches for ``mode: batch-api`` (a :class:`~raygrade.providers.batches.
BatchBackend`; see :mod:`raygrade.providers.batches` for the rules it follows)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raygrade.config import ProviderConfig
from raygrade.providers.base import ChatRequest, ChatResult
from raygrade.providers.batches import BatchView, cached_jsonl


class AnthropicBatches:
    """Anthropic's Message Batches through an ``anthropic.Anthropic`` client.

    Args:
        provider: The provider (``kind: anthropic``).
        client: The client (default: one for ``provider``: its ``base_url`` and key).
        clock: Wall-clock seconds (``time.time``), for the intent's time.
    """

    max_part_bytes = 256 * 1000 * 1000  # a batch's body
    #: How far the provider's clock may lag ours when a killed driver's batch is looked for (s).
    CLOCK_SKEW_S = 120.0

    def __init__(self, provider: ProviderConfig, client: Any = None, clock: Callable[[], float] = time.time):
        if client is None:
            from raygrade.providers.anthropic_messages import anthropic

            client = anthropic.Anthropic(api_key=provider.api_key().get_secret_value(), base_url=provider.base_url,
                                         max_retries=5, timeout=120, default_headers=provider.extra_headers or None)
        self.provider, self.client, self.clock = provider, client, clock

    def custom_id(self, batch_id: str) -> str:
        # raygrade's ids carry '~' and ':'; Anthropic's allow [A-Za-z0-9_-]{1,64}
        return "rg-" + hashlib.sha256(batch_id.encode()).hexdigest()[:48]

    def request_line(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        from raygrade.providers.anthropic_messages import messages_request

        return {"custom_id": custom_id, "params": messages_request(self.provider, request)
                | (self.provider.extra_body or {})}

    def _adopt(self, part: dict[str, Any], taken: set[str]) -> str | None:
        """The batch a killed driver made for ``part``: created after the intent, with as many requests."""
        since = part.get("intent_at", 0.0) - self.CLOCK_SKEW_S
        found = []
        for b in self.client.messages.batches.list(limit=100):
            if b.created_at.timestamp() < since:
                break  # newest first
            if b.id not in taken and sum(b.request_counts.model_dump().values()) == part["requests"]:
                found.append(b)
        return min(found, key=lambda b: b.created_at).id if found else None

    def submit(self, part: dict[str, Any], data: bytes, save: Callable[[], None], taken: set[str]) -> None:
        if part["status"] == "creating":  # a kill after the intent: was the batch made?
            part["batch_id"] = self._adopt(part, taken)
        if part["batch_id"] is None:
            part["status"], part["intent_at"] = "creating", self.clock()
            save()
            requests = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
            part["batch_id"] = self.client.messages.batches.create(requests=requests).id

    def retrieve(self, batch_id: str) -> BatchView:
        b = self.client.messages.batches.retrieve(batch_id)
        c = b.request_counts
        counts = {"total": c.processing + c.succeeded + c.errored + c.canceled + c.expired,
                  "completed": c.succeeded, "failed": c.errored + c.canceled + c.expired}
        return BatchView(status=b.processing_status, terminal=b.processing_status == "ended", counts=counts, raw=b)

    def cancel(self, batch_id: str) -> None:
        self.client.messages.batches.cancel(batch_id)

    def answers(self, part: dict[str, Any], batch: BatchView, folder: Path) -> dict[str, dict[str, Any]]:
        def fetch() -> bytes:
            lines = self.client.messages.batches.results(batch.raw.id)
            return "".join(json.dumps(r.model_dump(mode="json")) + "\n" for r in lines).encode()

        return cached_jsonl(folder / f"{part['name']}.output.jsonl", fetch)

    def reply(self, line: dict[str, Any], model: str) -> ChatResult | tuple[str, str]:
        from raygrade.providers.anthropic_messages import anthropic, messages_result

        result = line.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            message = anthropic.types.Message.model_validate(result["message"])
            return messages_result(message, {}, model)
        if kind == "expired":
            return "batch_expired", "the batch ended (24 h) before this request ran"
        if kind == "canceled":
            return "batch_cancelled", "the batch was cancelled before this request ran"
        err = ((result.get("error") or {}).get("error") or {})
        return "provider_error", f"{err.get('type') or 'error'}: {err.get('message') or kind}"[:300]
