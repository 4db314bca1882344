"""Raising validation problems from inside models at precise field paths."""

from __future__ import annotations

import json

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]

ERROR_TYPE = "sluice"


def field_error(message: str) -> PydanticCustomError:
    """An error for the field being validated, carrying a ready-made message."""
    return PydanticCustomError(ERROR_TYPE, "{message}", {"message": message})


def show(value: object) -> str:
    """A value as it would be written in a manifest, or what kind of value it is."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class Violations:
    """Collects cross-field problems of one model and raises them together.

    Locations are relative to the model and written with Kubernetes field names,
    so they read correctly once pydantic prefixes the model's own location.
    """

    def __init__(self, title: str) -> None:
        self._title = title
        self._details: list[InitErrorDetails] = []

    def add(self, loc: Loc, message: str, value: object = None) -> None:
        self._details.append(InitErrorDetails(type=field_error(message), loc=loc, input=value))

    def __bool__(self) -> bool:
        return bool(self._details)

    def raise_if_any(self) -> None:
        if self._details:
            raise ValidationError.from_exception_data(self._title, self._details)
