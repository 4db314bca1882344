"""Splitting YAML and JSON text into documents that remember their source lines."""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from sluice.model.violations import Loc


@dataclass(frozen=True)
class SyntaxProblem:
    document: int
    message: str
    line: int | None
    column: int | None


@dataclass(frozen=True)
class Document:
    """One document of a file: its 1-based index, its data and (when known) its YAML node."""

    index: int
    data: object
    node: yaml.Node | None = None

    def line_of(self, loc: Loc) -> int | None:
        """The 1-based line where `loc` (or the deepest part of it that exists) is written."""
        node = self.node
        if node is None:
            return None
        line = node.start_mark.line
        for part in loc:
            child = _child(node, part)
            if child is None:
                break
            key, node = child
            line = (key if key is not None else node).start_mark.line
        return line + 1

    def duplicate_keys(self) -> list[tuple[Loc, int]]:
        """Each repeated mapping key (a later value silently wins) and the line it is on."""
        found: list[tuple[Loc, int]] = []
        if self.node is not None:
            _find_duplicates(self.node, (), found, set())
        return found


def _find_duplicates(
    node: yaml.Node, loc: Loc, found: list[tuple[Loc, int]], seen: set[int]
) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in keys:
                found.append(((*loc, key.value), key.start_mark.line + 1))
            keys.add(key.value)
            _find_duplicates(value, (*loc, key.value), found, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicates(item, (*loc, index), found, seen)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None


def read_documents(text: str, *, json_format: bool) -> tuple[list[Document], SyntaxProblem | None]:
    """The documents of `text`, and the syntax problem that ended reading early, if any."""
    if json_format:
        return _read_json(text)
    return _read_yaml(text)


def _read_json(text: str) -> tuple[list[Document], SyntaxProblem | None]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return [], SyntaxProblem(1, f"invalid JSON: {err.msg}", err.lineno, err.colno)
    return [Document(1, data, _json_nodes(text))], None


def _json_nodes(text: str) -> yaml.Node | None:
    """Line information for JSON, which is nearly always also valid YAML."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _read_yaml(text: str) -> tuple[list[Document], SyntaxProblem | None]:
    documents: list[Document] = []
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            documents.append(Document(len(documents) + 1, loader.construct_document(node), node))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        reason = err.problem or err.context or "malformed document"
        line = None if mark is None else mark.line + 1
        column = None if mark is None else mark.column + 1
        return documents, SyntaxProblem(len(documents) + 1, f"invalid YAML: {reason}", line, column)
    except yaml.YAMLError as err:
        return documents, SyntaxProblem(len(documents) + 1, f"invalid YAML: {err}", None, None)
    finally:
        loader.dispose()
    return documents, None
