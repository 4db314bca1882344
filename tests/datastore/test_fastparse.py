"""The fast path reads a faultless file exactly as parse_text does, and steps aside
(returns None) for anything parse_text would report."""

from __future__ import annotations

import json

import pytest
import yaml

from sluice.datastore.fastparse import parse_faultless
from sluice.datastore.manifestdir import parse_manifest
from sluice.model.loader import parse_text

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"""
SLICE = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [198.18.16.5]
  conditions: {ready: true}
"""


def test_faultless_yaml_reads_as_parse_text_does() -> None:
    text = SERVICE + "---\n" + SLICE + "---\n"
    fast = parse_faultless(text, "x.yaml")
    slow = parse_text(text, "x.yaml")
    assert slow.ok and fast is not None
    assert list(fast) == list(slow.resources)


def test_faultless_json_list_reads_as_parse_text_does() -> None:
    items = [yaml.safe_load(SERVICE), yaml.safe_load(SLICE)]
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    fast = parse_faultless(text, "x.json")
    slow = parse_text(text, "x.json")
    assert slow.ok and fast is not None
    assert list(fast) == list(slow.resources)


@pytest.mark.parametrize("text,file", [
    (SERVICE.replace("kind: Service", "kind: Service\nkind: Service"), "x.yaml"),
    (SERVICE.replace("kind: Service", "kind: Servce"), "x.yaml"),
    (SERVICE.replace("apiVersion: v1", "apiVersion: v2"), "x.yaml"),
    (SERVICE.replace("port: 80,", "port: eighty,"), "x.yaml"),
    (SERVICE + "  bogus: [", "x.yaml"),
    ("- just\n- a list\n", "x.yaml"),
    ('{"apiVersion": "v1", "kind": "List", "items": [], "extra": 1}', "x.json"),
    ('{"apiVersion": "v2", "kind": "List", "items": []}', "x.json"),
    ('{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "List"}]}',
     "x.json"),
    ('{"apiVersion": "v1", "apiVersion": "v1", "kind": "Namespace", '
     '"metadata": {"name": "a"}}', "x.json"),
    ('{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}', "x.json"),
])
def test_anything_parse_text_reports_is_left_to_it(text: str, file: str) -> None:
    assert not parse_text(text, file).ok
    assert parse_faultless(text, file) is None


def test_manifest_defining_an_object_twice_is_still_rejected() -> None:
    parsed = parse_manifest("x.yaml", (SERVICE + "---\n" + SERVICE).encode())
    assert parsed.definitions is None
    assert any("more than once" in problem.message for problem in parsed.problems)
