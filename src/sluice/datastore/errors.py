"""Errors a datastore raises."""

from __future__ import annotations


class DatastoreError(Exception):
    """A datastore refused a request or cannot serve it; nothing was changed."""


def refusal_message(action: str, refusals: list[str]) -> str:
    """The message of a request refused whole: "apply refused, nothing was changed:" and
    one indented line per refused object."""
    lines = "".join(f"\n  {refusal}" for refusal in refusals)
    return f"{action} refused, nothing was changed:{lines}"


class ObjectNotFoundError(DatastoreError):
    """A delete named an object the datastore does not hold."""


class ResyncRequired(DatastoreError):  # noqa: N818 (reads as a condition, like HTTP 410)
    """A watch cannot resume from the requested revision (like a Kubernetes 410 Gone).

    The caller takes a fresh `snapshot()` and watches from its revision.
    """

    def __init__(self, since_revision: int, oldest: int, current: int) -> None:
        self.since_revision = since_revision
        self.oldest = oldest
        self.current = current
        if since_revision > current:
            reason = f"it is newer than the current revision {current}"
        else:
            reason = f"changes before revision {oldest} are no longer kept"
        super().__init__(
            f"cannot resume a watch from revision {since_revision}: {reason}; take a fresh snapshot"
        )
