"""The bases of every wire model: unknown fields are refused (a misspelt field is a 400 naming
it), and what clients send is strict (:class:`_Input`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Input(_Model):
    """A model of what clients send: no string may hold a NUL character (every ``str`` field
    and list of strings, checked after parsing, so the error names the field)."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        if isinstance(v, str):
            if "\x00" in v:
                raise ValueError("NUL characters are not allowed")
        elif isinstance(v, list) and any(isinstance(s, str) and "\x00" in s for s in v):
            raise ValueError("NUL characters are not allowed")
        return v


def number(**constraints: Any) -> Any:
    """A ``Field`` for a JSON number: strict (``"2"`` and ``true`` are refused, integers are
    accepted) and finite (``NaN``, ``Infinity`` refused), plus ``constraints`` (``ge``, ``le``…)."""
    return Field(strict=True, allow_inf_nan=False, **constraints)


#: A string of at most 128 characters (ids), for list items.
ShortStr = Annotated[str, Field(min_length=1, max_length=128)]
