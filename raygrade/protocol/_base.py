"""The base of every wire model: unknown fields are refused (a misspelt field is a 400 naming it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")
