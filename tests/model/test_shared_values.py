"""Equal small values (endpoint conditions, ports) and equal field sets are shared between
models, and sharing changes nothing a reader can see."""

from __future__ import annotations

import json

from sluice.bench import scaleobjects
from sluice.datastore.serialize import to_manifest
from sluice.model import parse_text
from sluice.model.endpointslice import EndpointSlice
from sluice.model.service import Service

SLICES = "\n---\n".join(
    f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s{i}, namespace: t}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [198.18.1.{i}]
  conditions: {{ready: true}}
- addresses: [198.18.2.{i}]
  conditions: {{ready: {'false' if i else 'true'}, serving: true}}
- addresses: [198.18.3.{i}]
""" for i in range(3))


def slices() -> list[EndpointSlice]:
    parsed = parse_text(SLICES, "slices.yaml")
    assert not parsed.problems, parsed.problems
    return [r for r in parsed.resources if isinstance(r, EndpointSlice)]


def test_equal_conditions_and_ports_are_one_instance() -> None:
    first, second, third = slices()
    assert first.endpoints[0].conditions is second.endpoints[0].conditions
    assert first.ports[0] is third.ports[0]
    assert first.endpoints[2].conditions is second.endpoints[2].conditions
    # Equal values only: ready false is not ready true.
    assert second.endpoints[1].conditions is third.endpoints[1].conditions
    assert first.endpoints[1].conditions is not second.endpoints[1].conditions
    assert first.endpoints[1].conditions.ready is True
    assert second.endpoints[1].conditions.ready is False
    assert first.endpoints[1].conditions.serving is True


def test_field_sets_are_shared_but_still_per_shape() -> None:
    first, second, _ = slices()
    assert first.endpoints[0].model_fields_set is second.endpoints[0].model_fields_set
    assert first.endpoints[2].model_fields_set == {"addresses"}
    assert first.endpoints[0].model_fields_set == {"addresses", "conditions"}
    copied = first.endpoints[2].model_copy(update={"zone": "a"})
    assert copied.model_fields_set == {"addresses", "zone"}
    assert first.endpoints[2].model_fields_set == {"addresses"}, "the shared set is unchanged"


def test_serialised_objects_are_unchanged_by_sharing() -> None:
    for found in slices():
        again = parse_text(json.dumps(to_manifest(found)), "again.json", json_format=True)
        assert list(again.resources) == [found]


def test_service_ports_are_shared() -> None:
    docs = [scaleobjects.service(i) for i in range(2)]
    text = "\n---\n".join(json.dumps(d) for d in docs)
    services = [r for r in parse_text(text, "svc.yaml").resources if isinstance(r, Service)]
    assert services[0].spec.ports[0] is services[1].spec.ports[0]
