"""Opening a datastore by URL."""

from __future__ import annotations

from sluice.datastore.filestore import FileDatastore
from sluice.datastore.interface import Datastore
from sluice.datastore.urls import parse_file_url, url_scheme


def open_datastore(url: str) -> Datastore:
    """The datastore `url` names: `file:///abs/dir` or `file://relative/dir`.

    Raises ValueError for a malformed URL or a scheme that is not supported (the
    message lists the supported ones), and DatastoreError if the store cannot open.
    """
    scheme = url_scheme(url)
    if scheme == "file":
        location = parse_file_url(url)
        return FileDatastore(location.directory, poll_interval=location.poll_interval)
    raise AssertionError(f"url_scheme accepted {scheme!r} but no datastore opens it")
