"""Annotated field types shared by the resource models, with Kubernetes-style messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, TypeAlias

from pydantic import PlainSerializer, PlainValidator

from sluice.model.addresses import AddressError, IPAddress, IPNetwork, parse_cidr, parse_ip
from sluice.model.names import (
    dns_label_problem,
    dns_subdomain_problem,
    label_value_problem,
    port_name_problem,
    qualified_name_problem,
)
from sluice.model.violations import Violations, field_error, show

Protocol: TypeAlias = Literal["TCP", "UDP", "SCTP"]

PORT_MIN = 1
PORT_MAX = 65535


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise field_error(f"expected a string, got {show(value)}")
    return value


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(f"expected an integer, got {show(value)}")
    return value


def _named(rule: Callable[[str], str | None], what: str) -> Callable[[object], str]:
    def validate(value: object) -> str:
        text = _string(value)
        problem = rule(text)
        if problem is not None:
            raise field_error(f'invalid {what} "{text}": {problem}')
        return text

    return validate


def int_in_range(low: int, high: int, noun: str) -> Callable[[object], int]:
    def validate(value: object) -> int:
        number = _integer(value)
        if not low <= number <= high:
            raise field_error(f"{noun} {number} out of range {low}-{high}")
        return number

    return validate


def _port_or_name(value: object) -> int | str:
    if isinstance(value, str):
        return _named(port_name_problem, "port name")(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(f"expected a port number or a port name, got {show(value)}")
    return int_in_range(PORT_MIN, PORT_MAX, "port")(value)


def _ip(value: object) -> IPAddress:
    try:
        return parse_ip(_string(value))
    except AddressError as err:
        raise field_error(str(err)) from None


def _cidr(value: object) -> IPNetwork:
    try:
        return parse_cidr(_string(value))
    except AddressError as err:
        raise field_error(str(err)) from None


def _map_of_strings(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise field_error(f"expected a mapping of strings, got {show(value)}")
    violations = Violations("map")
    for key, item in value.items():
        if not isinstance(key, str):
            violations.add((), f"key {show(key)} must be a string", key)
        elif not isinstance(item, str):
            violations.add((), f'value of "{key}" must be a string, got {show(item)}', item)
    violations.raise_if_any()
    return dict(value)


def _label_map(value: object) -> dict[str, str]:
    labels = _map_of_strings(value)
    violations = Violations("labels")
    for key, item in labels.items():
        key_problem = qualified_name_problem(key)
        if key_problem is not None:
            violations.add((), f'invalid label key "{key}": {key_problem}', key)
        value_problem = label_value_problem(item)
        if value_problem is not None:
            violations.add((), f'invalid value "{item}" for label "{key}": {value_problem}', item)
    violations.raise_if_any()
    return labels


def _annotation_map(value: object) -> dict[str, str]:
    annotations = _map_of_strings(value)
    violations = Violations("annotations")
    for key in annotations:
        problem = qualified_name_problem(key)
        if problem is not None:
            violations.add((), f'invalid annotation key "{key}": {problem}', key)
    violations.raise_if_any()
    return annotations


_as_text = PlainSerializer(str, when_used="json")

DNSLabel = Annotated[str, PlainValidator(_named(dns_label_problem, "name"))]
NamespaceName = Annotated[str, PlainValidator(_named(dns_label_problem, "namespace"))]
DNSSubdomain = Annotated[str, PlainValidator(_named(dns_subdomain_problem, "name"))]
LabelKey = Annotated[str, PlainValidator(_named(qualified_name_problem, "label key"))]
LabelValue = Annotated[str, PlainValidator(_named(label_value_problem, "label value"))]
PortName = Annotated[str, PlainValidator(_named(port_name_problem, "port name"))]
PortNumber = Annotated[int, PlainValidator(int_in_range(PORT_MIN, PORT_MAX, "port"))]
PortOrName = Annotated[int | str, PlainValidator(_port_or_name)]
StrictInteger = Annotated[int, PlainValidator(_integer)]
IPAddr = Annotated[IPAddress, PlainValidator(_ip), _as_text]
CIDR = Annotated[IPNetwork, PlainValidator(_cidr), _as_text]
LabelMap = Annotated[dict[str, str], PlainValidator(_label_map)]
AnnotationMap = Annotated[dict[str, str], PlainValidator(_annotation_map)]
