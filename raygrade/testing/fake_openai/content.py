"""What the fake server puts in its answers and how it counts prompts: schema instances, token
estimates by the API's rules, fake logprobs, injected output faults."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import time
import uuid
from typing import Any

from PIL import Image

from raygrade.tokens import TiktokenCounter, gpt4o_image_tokens

#: Token counter of the API's text rule (tiktoken), built on first use.
_COUNTER: TiktokenCounter | None = None


def _image_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:"):
        return None
    try:
        data = base64.b64decode(url.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return im.size
    except Exception:
        return None


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens as the hosted API counts them (see the module docstring).

    Images that are not ``data:`` URLs or cannot be decoded count 85 tokens (low detail).
    """
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = TiktokenCounter()
    n = 3
    for m in messages:
        n += 3
        c = m.get("content")
        if isinstance(c, str):
            n += _COUNTER.count(c)
        elif isinstance(c, list):
            for part in c:
                if part.get("type") == "text":
                    n += _COUNTER.count(part.get("text", ""))
                elif part.get("type") == "image_url":
                    image = part.get("image_url") or {}
                    size = _image_size(image.get("url", ""))
                    detail = "low" if image.get("detail") == "low" else "high"
                    n += gpt4o_image_tokens(*size, detail=detail) if size else 85
    return n


def schema_instance(schema: dict[str, Any], name: str = "", pad_tokens: int | None = None) -> Any:
    """A deterministic JSON value valid under ``schema`` (the subset raygrade emits).

    With ``pad_tokens``, string fields are lengthened so the whole value is about that many tokens.
    """
    if pad_tokens:
        value = schema_instance(schema, name)
        strings = _count_strings(value)
        extra = max(0, pad_tokens - math.ceil(len(json.dumps(value)) / 4))
        if strings and extra:
            _pad_strings(value, " Detail" * (extra // strings // 2 + 1))
        return value
    if "enum" in schema:
        vals = schema["enum"]
        return vals[len(vals) // 2]
    t = schema.get("type")
    if t == "object":
        return {k: schema_instance(v, k) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        return [schema_instance(schema.get("items", {}), name)]
    if t in ("number", "integer"):
        if name == "confidence":
            return 0.8
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 1)
        v = lo + (hi - lo) / 2
        return int(v) if t == "integer" else v
    if t == "string":
        return "Covers the main point; one detail of the reference answer is missing."
    if t == "boolean":
        return True
    return None


FAKE_TOKEN_LOGPROB = math.log(0.9)


def _fake_logprobs(content: str) -> list[dict[str, Any]]:
    """OpenAI-shaped ``logprobs.content``: the text in 4-character tokens, each at
    :data:`FAKE_TOKEN_LOGPROB`; digits and ``.`` are single tokens, as in real BPE vocabularies."""
    out = []
    for tok in re.findall(r"\d|\.|[^\d.]{1,4}", content):
        out.append({"token": tok, "logprob": FAKE_TOKEN_LOGPROB, "bytes": list(tok.encode()), "top_logprobs": []})
    return out


def _count_strings(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_count_strings(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_strings(v) for v in value)
    return 1 if isinstance(value, str) else 0


def _pad_strings(value: Any, pad: str) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in list(items):
        if isinstance(v, str):
            value[k] = v + pad
        else:
            _pad_strings(v, pad)


def _bump_scores(value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "score" and isinstance(v, (int, float)):
                value[k] = v + 1000
            else:
                _bump_scores(v)


def completion(body: dict[str, Any], prompt_tokens: int, *, fault: str | None = None,
               pad_tokens: int | None = None) -> dict[str, Any]:
    """The ``chat.completion`` object answering request ``body``: with ``response_format``
    ``json_schema``, an instance of the schema (padded to about ``pad_tokens``), else ``"OK"``;
    ``fault`` (``out_of_range``, ``malformed``, ``truncated``, ``refusal``) spoils it the way
    :data:`~raygrade.testing.fake_openai.records.FAULTS` describes. ``usage`` counts
    ``prompt_tokens`` and about four characters per completion token."""
    rf = body.get("response_format") or {}
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096)
    finish_reason, refusal = "stop", None
    if rf.get("type") == "json_schema":
        value = schema_instance(rf["json_schema"]["schema"], pad_tokens=pad_tokens)
        if fault == "out_of_range":
            _bump_scores(value)
        content: str | None = json.dumps(value)
    else:
        content = "OK"
    if fault == "malformed":
        content = "Sure! Here are the grades: {score: high"
    elif fault == "truncated":
        content, finish_reason = (content or "")[: max(1, len(content or "") // 2)], "length"
    elif fault == "refusal":
        content, refusal = None, "I can't help with that."
    completion_tokens = min(max_tokens, math.ceil(len(content or refusal or "") / 4))
    logprobs = {"content": _fake_logprobs(content), "refusal": None} if body.get("logprobs") and content else None
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": "fp_raygrade_fake",
        "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": logprobs,
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def asked_items(body: dict[str, Any]) -> list[str]:
    """``alias/question`` for each item the request's grading schema asks for (for the log)."""
    rf = body.get("response_format") or {}
    if rf.get("type") != "json_schema":
        return []
    props = ((rf.get("json_schema") or {}).get("schema") or {}).get("properties", {})
    return [f"{a}/{q}" for a, v in props.items() for q in (v.get("properties") or {})]
