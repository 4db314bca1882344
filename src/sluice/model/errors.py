"""Problems found in manifests, and the exception that carries them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

UNNAMED = "<unnamed>"


@dataclass(frozen=True)
class ManifestProblem:
    """One thing wrong with a manifest.

    `document` is 1-based within the file (None for problems with the file itself),
    `object` is `Kind namespace/name`, `Kind name` or `<unnamed>`, and `field` is a
    Kubernetes field path such as `spec.ports[1].targetPort` ("" for the whole object).
    """

    file: str
    document: int | None
    object: str
    field: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.document is not None:
            parts.append(f"document {self.document}")
        parts.extend(part for part in (self.object, self.field) if part)
        parts.append(self.message + self._position())
        return ": ".join(parts)

    def _position(self) -> str:
        if self.line is None:
            return ""
        if self.column is None:
            return f" (line {self.line})"
        return f" (line {self.line}, column {self.column})"


class ManifestError(Exception):
    """A manifest file has problems; all of that file's problems are listed."""

    def __init__(self, problems: Sequence[ManifestProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))
