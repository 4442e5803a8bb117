"""Gemini's batch mode for ``mode: batch-api`` (a :class:`~raygrade.providers.batches.
BatchBackend`; see :mod:`raygrade.providers.batches` for the rules it follows).

A part of at most :attr:`GeminiBatches.inline_max_bytes` goes as inline requests (Gemini takes
20 MB of them per job); a larger one as a JSONL input file through the Files API (2 GB a file:
``{"key", "request"}`` lines, the request in the REST form of ``GenerateContentRequest``), whose
answers come back as a JSONL file of ``{"key", "response" | "error"}`` lines (Gemini API, "Batch
API": input file).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raygrade.config import ProviderConfig
from raygrade.providers.base import ChatRequest, ChatResult
from raygrade.providers.batches import RETRYABLE, BatchView, cached_jsonl


class GeminiBatches:
    """Gemini's batch mode through a ``google.genai.Client`` (the Gemini Developer API).

    Args:
        provider: The provider (``kind: gemini``).
        client: The client (default: one for ``provider``: its ``base_url`` and key).
    """

    max_part_bytes = 2 * 1000 * 1000 * 1000  # an input file through the Files API (2 GB a file)
    inline_max_bytes = 18 * 1000 * 1000  # inline requests: 20 MB per batch, less the REST wrapping
    TERMINAL = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})
    #: What a request without an answer became, by the job's final state.
    UNANSWERED = {"JOB_STATE_EXPIRED": ("batch_expired", "the batch job expired before this request ran"),
                  "JOB_STATE_CANCELLED": ("batch_cancelled", "the batch job was cancelled before this request ran"),
                  "JOB_STATE_FAILED": ("provider_error", "the batch job failed")}

    def __init__(self, provider: ProviderConfig, client: Any = None):
        if client is None:
            from raygrade.providers.gemini import genai, types

            options: dict[str, Any] = {"timeout": 120_000, "retry_options": types.HttpRetryOptions(attempts=5)}
            if provider.base_url:
                options["base_url"] = provider.base_url
            if provider.extra_headers:
                options["headers"] = dict(provider.extra_headers)
            client = genai.Client(api_key=provider.api_key().get_secret_value(),
                                  http_options=types.HttpOptions(**options))
        self.provider, self.client = provider, client

    def custom_id(self, batch_id: str) -> str:
        return batch_id

    def request_line(self, custom_id: str, request: ChatRequest) -> dict[str, Any]:
        from raygrade.providers.gemini import generate_request, types

        kw = generate_request(self.provider, request)
        inline = types.InlinedRequest(model=kw["model"], contents=kw["contents"], config=kw["config"],
                                      metadata={"key": custom_id})
        return inline.model_dump(mode="json", exclude_none=True)

    @staticmethod
    def _display_name(part: dict[str, Any]) -> str:
        return f"raygrade-{part['name']}-{part['sha256'][:16]}"

    def submit(self, part: dict[str, Any], data: bytes, save: Callable[[], None], taken: set[str]) -> None:
        from raygrade.providers.gemini import types

        name = self._display_name(part)
        if part["status"] == "creating":  # a kill after the intent: was the job made?
            part["batch_id"] = next((j.name for j in self.client.batches.list(config={"page_size": 100})
                                     if j.display_name == name and j.name not in taken), None)
        if part["batch_id"] is None:
            part["status"] = "creating"
            save()
            lines = [types.InlinedRequest.model_validate(json.loads(x))
                     for x in data.decode().splitlines() if x.strip()]
            model = lines[0].model or self.provider.model
            src: Any = lines if len(data) <= self.inline_max_bytes else self._input_file(part, name, lines, save)
            part["batch_id"] = self.client.batches.create(model=model, src=src, config={"display_name": name}).name

    def _input_file(self, part: dict[str, Any], name: str, lines: list[Any], save: Callable[[], None]) -> str:
        """The name (``files/…``) of the part's input file: the one uploaded before a kill if it is
        still there (the Files API keeps a file 48 hours), else ``lines`` uploaded now."""
        from google.genai import batches as genai_batches
        from google.genai import errors as genai_errors

        if part.get("input_file"):
            try:
                return str(self.client.files.get(name=part["input_file"]).name)
            except genai_errors.ClientError:
                pass  # expired or deleted: upload again
        # The SDK's own converter to the REST form (the one batches.create applies to inline
        # requests); the batch names the model, so the lines do not.
        rest = [genai_batches._InlinedRequest_to_mldev(self.client._api_client, r) for r in lines]
        body = "".join(json.dumps({"key": (r.get("metadata") or {}).get("key"),
                                   "request": {k: v for k, v in r["request"].items() if k != "model"}}) + "\n"
                       for r in rest).encode()
        uploaded = self.client.files.upload(file=io.BytesIO(body), config={"display_name": name, "mime_type": "jsonl"})
        part["input_file"] = uploaded.name
        save()
        return str(uploaded.name)

    def retrieve(self, batch_id: str) -> BatchView:
        job = self.client.batches.get(name=batch_id)
        state = str(getattr(job.state, "value", job.state))
        counts = None  # the SDK reads no batch stats from the Gemini API: counted from the answers
        if (done := (job.dest.inlined_responses or []) if job.dest is not None else []):
            ok = sum(r.response is not None for r in done)
            counts = {"total": len(done), "completed": ok, "failed": len(done) - ok}
        return BatchView(status=state, terminal=state in self.TERMINAL, counts=counts, raw=job)

    def cancel(self, batch_id: str) -> None:
        self.client.batches.cancel(name=batch_id)

    def answers(self, part: dict[str, Any], batch: BatchView, folder: Path) -> dict[str, dict[str, Any]]:
        def fetch() -> bytes:
            got = {}
            dest = batch.raw.dest
            for r in (dest.inlined_responses or []) if dest is not None else []:
                key = (r.metadata or {}).get("key")
                got[key] = {"custom_id": key,
                            "response": r.response.model_dump(mode="json", exclude_none=True) if r.response else None,
                            "error": r.error.model_dump(mode="json", exclude_none=True) if r.error else None}
            if dest is not None and dest.file_name:  # an input file's job answers in a file
                for line in self.client.files.download(file=dest.file_name).decode().splitlines():
                    if line.strip():
                        r = json.loads(line)
                        got[r.get("key")] = {"custom_id": r.get("key"), "response": r.get("response"),
                                             "error": r.get("error") or r.get("status")}
            unanswered = self.UNANSWERED.get(batch.status)
            if unanswered is not None:
                sent = (folder / f"{part['name']}.requests.jsonl").read_text().splitlines()
                for line in sent:
                    key = json.loads(line)["metadata"]["key"]
                    got.setdefault(key, {"custom_id": key, "response": None,
                                         "error": {"code": unanswered[0], "message": unanswered[1]}})
            return "".join(json.dumps(v) + "\n" for v in got.values()).encode()

        return cached_jsonl(folder / f"{part['name']}.output.jsonl", fetch)

    def reply(self, line: dict[str, Any], model: str) -> ChatResult | tuple[str, str]:
        from raygrade.providers.gemini import generate_result, types

        if line.get("response") is not None:
            return generate_result(types.GenerateContentResponse.model_validate(line["response"]), model)
        err = line.get("error") or {}
        code = str(err.get("code") or "batch_error")
        if code in RETRYABLE:
            return code, str(err.get("message") or code)[:300]
        return "provider_error", f"{code}: {err.get('message') or 'error'}"[:300]
