"""Throughput figures under the names vLLM's serving benchmark (``vllm bench serve``) gives them.

Where a raygrade benchmark measures the same quantity as vLLM's benchmark, it reports it
under vLLM's key and unit so the numbers can be read side by side:

- ``request_throughput``: answered (HTTP 200) requests per second of wall time (req/s);
- ``output_throughput``: completion tokens per second (tok/s);
- ``total_token_throughput``: prompt + completion tokens per second (tok/s).

TTFT, TPOT and ITL do not apply: grading calls are not streamed (the JSON-schema answer is
validated whole), so the first token is not observable to raygrade. Token counts are the
provider's (``usage`` as the server reported it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def serving_throughput(log: Iterable[Any], wall_s: float) -> dict[str, float]:
    """vLLM-named throughput over a fake server's request log (:class:`raygrade.testing.fake_openai.RequestRecord`).

    Args:
        log: Records with ``status``, ``prompt_tokens`` and ``completion_tokens``.
        wall_s: Wall time the run took, seconds (> 0).

    Raises:
        ValueError: ``wall_s`` is not positive.
    """
    if wall_s <= 0:
        raise ValueError(f"wall_s must be positive, got {wall_s}")
    ok = [r for r in log if r.status == 200]
    prompt = sum(r.prompt_tokens for r in ok)
    completion = sum(r.completion_tokens for r in ok)
    return {"completed": len(ok), "request_throughput": len(ok) / wall_s,
            "output_throughput": completion / wall_s, "total_token_throughput": (prompt + completion) / wall_s}
