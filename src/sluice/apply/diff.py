"""How many objects an apply step added, changed and removed, for logs and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Changes:
    """Counts of one kind of object (endpoints, routes, links, ...)."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def add(self, more: Changes) -> None:
        self.added += more.added
        self.changed += more.changed
        self.removed += more.removed
        self.unchanged += more.unchanged

    def __str__(self) -> str:
        parts = [f"+{self.added}" if self.added else "", f"~{self.changed}" if self.changed else "",
                 f"-{self.removed}" if self.removed else ""]
        return " ".join(p for p in parts if p) or "="


@dataclass
class ChangeLog:
    """Changes by object kind, in the order they were applied."""

    kinds: dict[str, Changes] = field(default_factory=dict)

    def __getitem__(self, kind: str) -> Changes:
        return self.kinds.setdefault(kind, Changes())

    def __setitem__(self, kind: str, changes: Changes) -> None:
        self.kinds[kind] = changes

    @property
    def any(self) -> bool:
        return any(c.any for c in self.kinds.values())

    def summary(self) -> str:
        """e.g. `endpoints +2, routes ~1, links +2 ~1 (adopted)`: only what changed."""
        return ", ".join(f"{kind} {changes}" for kind, changes in self.kinds.items()
                         if changes.any) or "nothing changed"
