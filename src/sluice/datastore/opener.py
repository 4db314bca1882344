"""Opening a datastore by URL."""

from __future__ import annotations

import importlib

from sluice.datastore.errors import DatastoreError
from sluice.datastore.etcdstore import EtcdDatastore
from sluice.datastore.filestore import FileDatastore
from sluice.datastore.interface import Datastore
from sluice.datastore.urls import parse_etcd_url, parse_file_url, url_scheme


def open_datastore(url: str) -> Datastore:
    """The datastore `url` names: `file://DIR`, `etcd://HOST:PORT[,...]` or `kubernetes://`
    (see `sluice.datastore.urls`).

    Raises ValueError for a malformed URL or a scheme that is not supported (the
    message lists the supported ones), and DatastoreError if the store cannot open.
    """
    scheme = url_scheme(url)
    if scheme == "file":
        location = parse_file_url(url)
        return FileDatastore(location.directory, poll_interval=location.poll_interval)
    if scheme == "etcd":
        return EtcdDatastore(parse_etcd_url(url))
    if scheme == "kubernetes":
        try:
            kubestore = importlib.import_module("sluice.datastore.kubestore")
        except ImportError as err:
            raise DatastoreError(f"the kubernetes datastore cannot load: {err}") from err
        store = kubestore.KubernetesDatastore.from_url(url)
        assert isinstance(store, Datastore)
        return store
    raise AssertionError(f"url_scheme accepted {scheme!r} but no datastore opens it")
