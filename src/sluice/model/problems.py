"""Turning pydantic validation errors into Kubernetes field paths and plain messages."""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from sluice.model.violations import ERROR_TYPE, Loc, show

_EXPECTED_BY_TYPE = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}


@dataclass(frozen=True)
class FieldIssue:
    """One validation error: where it is on the wire, as a Kubernetes path, and what it is."""

    loc: Loc
    path: str
    message: str


def field_issues(
    model: type[BaseModel], error: ValidationError, prefix: Loc = ()
) -> list[FieldIssue]:
    """The issues of `error`, raised validating `model` from an object found at `prefix`."""
    issues = []
    for detail in error.errors():
        loc = prefix + tuple(detail["loc"])
        path = render_path(loc, model, skip=len(prefix))
        issues.append(FieldIssue(loc, path, _message(model, detail)))
    return issues


def render_path(loc: Loc, model: type[BaseModel] | None = None, skip: int = 0) -> str:
    """`spec.ports[1].targetPort` notation. The part of `loc` after the first `skip`
    steps is read against `model`, so that map keys are shown in brackets."""
    text = ""
    current: Any = model
    for position, part in enumerate(loc):
        is_key = False
        if position >= skip and current is not None:
            current, is_key = _step(current, part)
        if isinstance(part, int) or is_key:
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def unwrap_annotation(annotation: Any) -> Any:
    """The type inside Annotated[...] and Optional[...]."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _model_field(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (info.alias, name):
            return info.annotation
    return None


def _step(annotation: Any, part: str | int) -> tuple[Any, bool]:
    """The type one location step below `annotation`, and whether the step was a map key."""
    annotation = unwrap_annotation(annotation)
    origin = get_origin(annotation)
    args = get_args(annotation)
    if isinstance(part, int) and origin in (tuple, list) and args:
        return args[0], False
    if isinstance(part, str) and origin in (dict, Mapping) and len(args) == 2:
        return args[1], True
    if isinstance(part, str) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_field(annotation, part), False
    return None, False


def _walk(model: type[BaseModel], loc: Loc) -> Any:
    current: Any = model
    for part in loc:
        if current is None:
            return None
        current, _ = _step(current, part)
    return current


def _message(model: type[BaseModel], detail: ErrorDetails) -> str:
    error_type = detail["type"]
    ctx = detail.get("ctx") or {}
    value = detail.get("input")
    loc = tuple(detail["loc"])
    if error_type == ERROR_TYPE:
        return str(ctx["message"])
    if error_type == "extra_forbidden":
        return _unknown_field(_walk(model, loc[:-1]), str(loc[-1]))
    if error_type == "missing":
        return "required field is missing"
    if error_type == "literal_error":
        return f"invalid value {show(value)}: expected {_expected_literals(model, loc, ctx)}"
    if error_type in _EXPECTED_BY_TYPE:
        return f"{_EXPECTED_BY_TYPE[error_type]}, got {show(value)}"
    if error_type == "value_error":
        return str(ctx.get("error", detail["msg"]))
    return detail["msg"]


def _expected_literals(model: type[BaseModel], loc: Loc, ctx: dict[str, Any]) -> str:
    annotation = unwrap_annotation(_walk(model, loc))
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(show(choice) for choice in get_args(annotation))
    return str(ctx.get("expected", "a known value"))


def _unknown_field(parent: Any, key: str) -> str:
    parent = unwrap_annotation(parent)
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return f'unknown field "{key}"'
    known = [info.alias or name for name, info in parent.model_fields.items()]
    suggestion = _closest(key, known)
    if suggestion is not None:
        return f'unknown field "{key}" (did you mean "{suggestion}"?)'
    return f'unknown field "{key}" (known fields: {", ".join(sorted(known))})'


def _closest(key: str, known: list[str]) -> str | None:
    """The known name `key` most likely misspells: a completion first, else a close match."""
    by_lower = {name.lower(): name for name in known}
    lowered = key.lower()
    completions = sorted(name for name in by_lower if name.startswith(lowered))
    if len(lowered) >= 3 and completions:
        return by_lower[completions[0]]
    close = difflib.get_close_matches(lowered, list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None
