"""MkDocs hooks: reference sections generated from the code at build time.

- ``<!-- raygrade:config-reference -->``: one table per settings model (pydantic v2), every
  field with its type, default and description (``Field(description=...)`` or the class
  docstring's ``Attributes:`` entry);
- ``<!-- raygrade:http-routes -->``: the HTTP routes from the application's OpenAPI document.

A field without a description fails the build (``mkdocs build --strict`` in CI).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from mkdocs.exceptions import PluginError

CONFIG_MODELS = [
    ("raygrade.config", "RaygradeArgs"), ("raygrade.config", "ApiConfig"), ("raygrade.config", "ProviderConfig"),
    ("raygrade.config", "RateLimitConfig"), ("raygrade.config", "BatcherConfig"), ("raygrade.config", "StoreConfig"),
    ("raygrade.selfhosted", "ServedModelConfig"), ("raygrade.selfhosted", "LocalEngineConfig"),
    ("raygrade.protocol", "JobOptions"),
]
_ENTRY = re.compile(r"^(\s+)([A-Za-z_][\w, ]*):\s*(.*)$")


def _attributes(cls: type) -> dict[str, str]:
    """``{field: text}`` from the Google-style ``Attributes:`` section of ``cls``'s docstring."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    names: list[str] = []
    indent = None
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):
            break  # the next section
        m = _ENTRY.match(line)
        if m and (indent is None or len(m.group(1)) == indent):
            indent = len(m.group(1))
            names = [n.strip() for n in m.group(2).split(",")]
            for n in names:
                out[n] = m.group(3).strip()
        elif line.strip() and names:
            for n in names:
                out[n] += " " + line.strip()
    return out


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    text = re.sub(r"\b(typing|raygrade\.[\w.]+|pathlib)\.", "", text).replace("NoneType", "None")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if hasattr(value, "model_dump"):
        return "(defaults)"
    return f"`{value!r}`".replace("|", "\\|")


def config_reference() -> str:
    import importlib

    parts = []
    for module, name in CONFIG_MODELS:
        cls = getattr(importlib.import_module(module), name)
        docs = _attributes(cls)
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        rows = []
        for fname, field in cls.model_fields.items():
            text = field.description or docs.get(fname)
            if not text:
                raise PluginError(f"{module}.{name}.{fname} has no description (Field(description=...) or the "
                                  "class docstring's Attributes:)")
            text = " ".join(text.split()).replace("|", "\\|")
            rows.append(f"| `{fname}` | `{_type(field.annotation)}` | {_default(field)} | {text} |")
        parts += [f"### `{name}`", "", f"`{module}.{name}`: {summary}", "", "| field | type | default | description |",
                  "|---|---|---|---|", *rows, ""]
    return "\n".join(parts)


def http_routes() -> str:
    from raygrade.serve.ingress import api

    doc = api.openapi()
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            statuses = ", ".join(sorted(op.get("responses", {})))
            summary = (op.get("description") or op.get("summary") or "").split("\n")[0].replace("|", "\\|")
            rows.append(f"| `{method.upper()}` | `{path}` | {summary} | {statuses} |")
    return "\n".join(["| method | path | what | statuses |", "|---|---|---|---|", *rows])


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if "<!-- raygrade:config-reference -->" in markdown:
        markdown = markdown.replace("<!-- raygrade:config-reference -->", config_reference())
    if "<!-- raygrade:http-routes -->" in markdown:
        markdown = markdown.replace("<!-- raygrade:http-routes -->", http_routes())
    return markdown
