"""Datastore URLs: `file:///abs/dir`, `file://relative/dir`, and options in the query."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

SUPPORTED_SCHEMES = ("file",)
PLANNED_SCHEMES = ("etcd", "kubernetes")
FILE_OPTIONS = ("poll",)


@dataclass(frozen=True)
class FileLocation:
    """Where a file datastore lives, and how often it polls (None: the default)."""

    directory: Path
    poll_interval: float | None = None


def _schemes_hint() -> str:
    return (
        f"supported: {', '.join(f'{scheme}://' for scheme in SUPPORTED_SCHEMES)} "
        f"(planned: {', '.join(f'{scheme}://' for scheme in PLANNED_SCHEMES)})"
    )


def url_scheme(url: str) -> str:
    """The scheme of a datastore URL; ValueError if `url` has none or one not supported."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"invalid datastore URL {url!r}: expected scheme://location, e.g. "
            f"file:///var/lib/sluice/manifests; {_schemes_hint()}"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme in SUPPORTED_SCHEMES:
        return scheme
    if scheme in PLANNED_SCHEMES:
        raise ValueError(
            f"datastore URL {url!r}: the {scheme} datastore is not available yet; {_schemes_hint()}"
        )
    raise ValueError(f"datastore URL {url!r}: unknown scheme {scheme!r}; {_schemes_hint()}")


def parse_file_url(url: str) -> FileLocation:
    """The directory and options of a `file://` URL.

    `file:///abs/dir` is absolute; `file://relative/dir` is relative to the working
    directory (the part before the first slash is read as a directory, not a host).
    The only option is `poll`, the polling interval in seconds: `file:///dir?poll=0.5`.
    """
    if url_scheme(url) != "file":
        raise ValueError(f"not a file datastore URL: {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise ValueError(f"invalid datastore URL {url!r}: {err}") from None
    if parts.fragment:
        raise ValueError(f"invalid datastore URL {url!r}: a fragment (#...) is not allowed")
    location = unquote(parts.netloc + parts.path)
    if not location:
        raise ValueError(
            f"invalid datastore URL {url!r}: no directory; expected file:///abs/dir "
            "or file://relative/dir"
        )
    if "\0" in location:
        raise ValueError(f"invalid datastore URL {url!r}: the path contains a NUL byte")
    return FileLocation(Path(location), _poll_interval(url, parts.query))


def _poll_interval(url: str, query: str) -> float | None:
    poll: float | None = None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"invalid datastore URL {url!r}: malformed query {query!r}") from None
    for name, value in pairs:
        if name not in FILE_OPTIONS:
            raise ValueError(
                f"invalid datastore URL {url!r}: unknown option {name!r}; "
                f"file:// takes {', '.join(FILE_OPTIONS)}"
            )
        try:
            poll = float(value)
        except ValueError:
            poll = math.nan
        if not (math.isfinite(poll) and poll > 0):
            raise ValueError(
                f"invalid datastore URL {url!r}: poll must be a positive number of seconds, "
                f"got {value!r}"
            )
    return poll
