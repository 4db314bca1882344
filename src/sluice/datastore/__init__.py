"""Datastores: where cluster objects live, as a snapshot plus a stream of changes."""

from sluice.datastore.changes import Change, ChangeKind, ResourceKey
from sluice.datastore.errors import DatastoreError, ObjectNotFoundError, ResyncRequired
from sluice.datastore.filestore import DEFAULT_POLL_INTERVAL, FileDatastore, object_file_name
from sluice.datastore.interface import Datastore
from sluice.datastore.opener import open_datastore
from sluice.datastore.serialize import to_manifest, to_yaml
from sluice.datastore.state import ClusterState
from sluice.datastore.urls import PLANNED_SCHEMES, SUPPORTED_SCHEMES

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "PLANNED_SCHEMES",
    "SUPPORTED_SCHEMES",
    "Change",
    "ChangeKind",
    "ClusterState",
    "Datastore",
    "DatastoreError",
    "FileDatastore",
    "ObjectNotFoundError",
    "ResourceKey",
    "ResyncRequired",
    "object_file_name",
    "open_datastore",
    "to_manifest",
    "to_yaml",
]
