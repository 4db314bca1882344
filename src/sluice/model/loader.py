"""Parsing manifest files (multi-document YAML, JSON, `kind: List`) into typed resources."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from sluice.model.documents import Document, read_documents
from sluice.model.errors import UNNAMED, ManifestError, ManifestProblem
from sluice.model.problems import field_issues, render_path
from sluice.model.registry import api_versions_of, known_kinds, resource_class
from sluice.model.resource import DEFAULT_NAMESPACE, Resource
from sluice.model.violations import Loc, show

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
LIST_KIND = "List"
_LIST_FIELDS = ("apiVersion", "kind", "metadata", "items")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ParseResult:
    """What one file held: the resources that validated, and every problem found."""

    file: str
    resources: tuple[Resource, ...]
    problems: tuple[ManifestProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def describe(raw: dict[object, object]) -> str:
    """How problems name an object: `Kind namespace/name`, `Kind name` or `<unnamed>`."""
    kind, api_version = raw.get("kind"), raw.get("apiVersion")
    kind = kind if isinstance(kind, str) and kind else None
    cls = resource_class(api_version, kind) if kind and isinstance(api_version, str) else None
    metadata = raw.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not name:
        return f"{kind} {UNNAMED}" if kind else UNNAMED
    namespaced = cls.NAMESPACED if cls is not None else isinstance(namespace, str)
    qualified = f"{namespace or DEFAULT_NAMESPACE}/{name}" if namespaced else name
    return f"{kind or '<no kind>'} {qualified}"


@dataclass
class _DocumentParser:
    file: str
    document: Document
    problems: list[ManifestProblem] = field(default_factory=list)

    def report(
        self, obj: str, loc: Loc, message: str, path: str | None = None, line: int | None = None
    ) -> None:
        self.problems.append(
            ManifestProblem(
                file=self.file,
                document=self.document.index,
                object=obj,
                field=render_path(loc) if path is None else path,
                message=message,
                line=self.document.line_of(loc) if line is None else line,
            )
        )

    def parse(self) -> list[Resource]:
        data = self.document.data
        if data is None:
            return []
        obj = describe(data) if isinstance(data, dict) else UNNAMED
        for loc, line in self.document.duplicate_keys():
            message = f'duplicate key "{loc[-1]}"; only the last value would count'
            self.report(obj, loc, message, line=line)
        if not isinstance(data, dict):
            self.report(
                UNNAMED,
                (),
                f"expected a mapping with apiVersion, kind and metadata, got {show(data)}",
            )
            return []
        if data.get("kind") == LIST_KIND:
            return self._parse_list(data)
        resource = self._parse_object(data, ())
        return [] if resource is None else [resource]

    def _parse_list(self, data: dict[object, object]) -> list[Resource]:
        for key in data:
            if key not in _LIST_FIELDS:
                self.report(LIST_KIND, (str(key),), f'unknown field "{key}" in a List')
        if data.get("apiVersion") != "v1":
            self.report(
                LIST_KIND,
                ("apiVersion",),
                f'kind List needs apiVersion "v1", got {show(data.get("apiVersion"))}',
            )
        items = data.get("items")
        if not isinstance(items, list):
            self.report(LIST_KIND, ("items",), f"expected a list of objects, got {show(items)}")
            return []
        parsed = (self._parse_object(item, ("items", index)) for index, item in enumerate(items))
        return [resource for resource in parsed if resource is not None]

    def _parse_object(self, raw: object, prefix: Loc) -> Resource | None:
        if not isinstance(raw, dict):
            self.report(
                UNNAMED,
                prefix,
                f"expected a mapping with apiVersion, kind and metadata, got {show(raw)}",
            )
            return None
        cls = self._resource_class(raw, prefix)
        if cls is None:
            return None
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            obj = describe(raw)
            for issue in field_issues(cls, err, prefix):
                self.report(obj, issue.loc, issue.message, issue.path)
            return None

    def _resource_class(self, raw: dict[object, object], prefix: Loc) -> type[Resource] | None:
        obj = describe(raw)
        kind, api_version = raw.get("kind"), raw.get("apiVersion")
        if not isinstance(kind, str) or not kind:
            self.report(obj, (*prefix, "kind"), f"expected a kind such as Pod, got {show(kind)}")
            return None
        if kind == LIST_KIND:
            self.report(obj, (*prefix, "kind"), "a List cannot be nested in a List")
            return None
        if not isinstance(api_version, str) or not api_version:
            self.report(obj, (*prefix, "apiVersion"), f"expected a string, got {show(api_version)}")
            return None
        cls = resource_class(api_version, kind)
        if cls is not None:
            return cls
        versions = api_versions_of(kind)
        if versions:
            expected = " or ".join(f'"{version}"' for version in versions)
            self.report(
                obj,
                (*prefix, "apiVersion"),
                f'kind {kind} needs apiVersion {expected}, got "{api_version}"',
            )
        else:
            self.report(obj, (*prefix, "kind"), _unknown_kind(kind))
        return None


def _unknown_kind(kind: str) -> str:
    kinds = known_kinds()
    close = difflib.get_close_matches(kind, kinds, n=1, cutoff=0.6)
    if close:
        return f'unknown kind "{kind}" (did you mean "{close[0]}"?)'
    return f'unknown kind "{kind}": expected one of {", ".join(kinds)} or List'


def parse_text(text: str, file: str, *, json_format: bool | None = None) -> ParseResult:
    """Parse manifest text; `file` names it in problems and, by its suffix, picks JSON or YAML."""
    if json_format is None:
        json_format = file.lower().endswith(".json")
    documents, syntax = read_documents(text, json_format=json_format)
    resources: list[Resource] = []
    problems: list[ManifestProblem] = []
    for document in documents:
        parser = _DocumentParser(file, document)
        resources.extend(parser.parse())
        problems.extend(parser.problems)
    if syntax is not None:
        problems.append(
            ManifestProblem(
                file, syntax.document, "", "", syntax.message, syntax.line, syntax.column
            )
        )
    return ParseResult(file, tuple(resources), tuple(problems))


def parse_file(path: PathLike) -> ParseResult:
    """Parse one manifest file; an unreadable file is reported as a problem."""
    file = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        reason = err.strerror or str(err)
        return ParseResult(
            file, (), (ManifestProblem(file, None, "", "", f"cannot read: {reason}"),)
        )
    except UnicodeDecodeError as err:
        message = f"not UTF-8 text: byte {err.start} cannot be decoded"
        return ParseResult(file, (), (ManifestProblem(file, None, "", "", message),))
    return parse_text(text, file)


def manifest_files(path: PathLike) -> list[Path]:
    """A directory's *.yaml, *.yml and *.json files (sorted, not recursive), or the path itself."""
    candidate = Path(path)
    if not candidate.is_dir():
        return [candidate]
    return sorted(
        entry
        for entry in candidate.iterdir()
        if entry.is_file() and entry.suffix.lower() in MANIFEST_SUFFIXES
    )


def load_manifests(paths: Iterable[PathLike]) -> list[Resource]:
    """Every resource in `paths` (files or directories), in order.

    Raises ManifestError for the first file that has problems, with all of its problems.
    """
    resources: list[Resource] = []
    for path in paths:
        for file in manifest_files(path):
            result = parse_file(file)
            if result.problems:
                raise ManifestError(result.problems)
            resources.extend(result.resources)
    return resources
