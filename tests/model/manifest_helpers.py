"""Helpers shared by the model tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sluice.model import ManifestProblem, Resource, parse_text

MANIFESTS = Path(__file__).parent / "manifests"


def parse_ok(text: str, file: str = "test.yaml") -> list[Resource]:
    result = parse_text(textwrap.dedent(text), file)
    assert result.problems == (), "\n".join(str(problem) for problem in result.problems)
    return list(result.resources)


def problems_of(text: str, file: str = "test.yaml") -> list[ManifestProblem]:
    return list(parse_text(textwrap.dedent(text), file).problems)
