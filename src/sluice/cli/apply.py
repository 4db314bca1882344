"""`sluice apply -f` and `sluice delete -f`: manifests into (or out of) a datastore."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from sluice import netns
from sluice.datastore import (
    ClusterState,
    Datastore,
    DatastoreError,
    ResourceKey,
    open_datastore,
)
from sluice.model import Resource, manifest_files, parse_file

DATASTORE_ENV = "SLUICE_DATASTORE"

DESCRIPTION = """\
Write the objects of Kubernetes-style manifests to a datastore (`apply`), or delete the
objects they name (`delete`): the datastore the agents watch, given by --datastore or
the SLUICE_DATASTORE environment variable:

  file:///var/lib/sluice/cluster
  etcd://10.0.0.5:2379,10.0.0.6:2379[?prefix=/sluice/v1&timeout=5]
  kubernetes://[?kubeconfig=PATH&context=NAME]

Every file is parsed and validated first; on any problem each one is printed as
FILE: document N: KIND NAMESPACE/NAME: FIELD: what is wrong, and nothing is written.
The objects then go in one request (one etcd transaction). --netns NAME connects from
inside network namespace NAME (e.g. a lab's etcd: sluice lab get shows it)."""

EPILOG = """\
exit status:
  0  done
  1  the datastore refused the request or cannot be reached (nothing was changed)
  2  a manifest has problems, or no datastore was given (nothing was changed)

examples:
  sluice apply -f policy.yaml --datastore etcd://10.0.0.5:2379
  SLUICE_DATASTORE=file:///srv/cluster sluice delete -f old-services/"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for command, help_text in (("apply", "create or update objects in a datastore"),
                               ("delete", "delete the objects manifests name from a datastore")):
        parser = sub.add_parser(command, help=help_text, description=DESCRIPTION,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("-f", "--filename", dest="paths", metavar="PATH", action="append",
                            required=True, help="a manifest file, or a directory of them; "
                                                "repeat for more")
        parser.add_argument("--datastore", metavar="URL",
                            help=f"the datastore (default: ${DATASTORE_ENV})")
        parser.add_argument("--netns", metavar="NAME",
                            help="connect to the datastore from network namespace NAME")
        if command == "delete":
            parser.add_argument("--ignore-not-found", action="store_true",
                                help="skip objects that do not exist")
        parser.set_defaults(handler=run_apply if command == "apply" else run_delete)


def run_apply(args: argparse.Namespace) -> int:
    return _run(args, "apply")


def run_delete(args: argparse.Namespace) -> int:
    return _run(args, "delete")


def _run(args: argparse.Namespace, command: str) -> int:
    resources = load_resources(f"sluice {command}", args.paths)
    if resources is None:
        return 2
    url = args.datastore or os.environ.get(DATASTORE_ENV)
    if not url:
        _fail(command, f"no datastore: give --datastore URL or set {DATASTORE_ENV}")
        return 2
    try:
        with contextlib.ExitStack() as stack:
            if args.netns:
                # this thread only: every connection the datastore makes starts there
                stack.enter_context(netns.entered(args.netns))
            datastore = stack.enter_context(open_datastore(url))
            if command == "apply":
                apply(datastore, resources)
            else:
                delete(datastore, resources, args.ignore_not_found)
    except ValueError as err:
        _fail(command, str(err))
        return 2
    except (DatastoreError, OSError) as err:
        _fail(command, str(err))
        return 1
    return 0


def load_resources(prog: str, paths: Sequence[str]) -> list[Resource] | None:
    """Every object of PATHS; on problems print them all, each prefixed by PROG
    ("sluice apply", "sluice lab up"), and return None."""
    resources: list[Resource] = []
    for path in paths:
        files = manifest_files(path)
        if not files:
            print(f"{prog}: {path}: no *.yaml, *.yml or *.json files in directory",
                  file=sys.stderr)
            return None
        for file in files:
            result = parse_file(file)
            if result.problems:
                for problem in result.problems:
                    print(problem, file=sys.stderr)
                count = len(result.problems)
                print(f"{prog}: {result.file}: {count} problem{'s' if count != 1 else ''}; "
                      "nothing was changed", file=sys.stderr)
                return None
            resources.extend(result.resources)
    return resources


def apply(datastore: Datastore, resources: Sequence[Resource]) -> None:
    before = datastore.snapshot()
    revision = datastore.apply(resources)
    for resource in resources:
        previous = before.get(ResourceKey.of(resource))
        verb = ("created" if previous is None else
                "unchanged" if previous == resource else "configured")
        print(f"{_name(ResourceKey.of(resource))} {verb}")
    print(f"revision {revision}")


def delete(datastore: Datastore, resources: Sequence[Resource], ignore_not_found: bool
           ) -> None:
    keys = list(dict.fromkeys(ResourceKey.of(resource) for resource in resources))
    if ignore_not_found:
        present: ClusterState = datastore.snapshot()
        for key in keys:
            if key not in present:
                print(f"{_name(key)} not found (ignored)")
        keys = [key for key in keys if key in present]
    if not keys:
        return
    revision = datastore.delete(keys)
    for key in keys:
        print(f"{_name(key)} deleted")
    print(f"revision {revision}")


def _name(key: ResourceKey) -> str:
    scope = f"{key.namespace}/" if key.namespace else ""
    return f"{key.kind.lower()}/{scope}{key.name}"


def _fail(command: str, message: str) -> None:
    print(f"sluice {command}: {message}", file=sys.stderr, flush=True)
