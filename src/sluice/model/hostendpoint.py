"""HostEndpoint (sluice.io/v1): one network interface of a node, for host policy to select."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, PlainValidator

from sluice.model.addresses import IPAddress
from sluice.model.base import KubeModel
from sluice.model.fieldtypes import DNSSubdomain, IPAddr
from sluice.model.resource import Resource
from sluice.model.violations import field_error, show

IFNAMSIZ = 16  # the kernel's buffer for an interface name, terminating NUL included


def interface_name_problem(name: str) -> str | None:
    """What the kernel (dev_valid_name) would refuse about `name` as an interface name."""
    if not name:
        return "must not be empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"must be at most {IFNAMSIZ - 1} bytes long"
    if name in (".", ".."):
        return 'must not be "." or ".."'
    if any(char in "/:" or char.isspace() for char in name):
        return "must not contain '/', ':' or whitespace"
    return None


def _interface_name(value: object) -> str:
    if not isinstance(value, str):
        raise field_error(f"expected a string, got {show(value)}")
    problem = interface_name_problem(value)
    if problem is not None:
        raise field_error(f'invalid interface name "{value}": {problem}')
    return value


InterfaceName = Annotated[str, PlainValidator(_interface_name)]


class HostEndpointSpec(KubeModel):
    node: DNSSubdomain
    interface_name: InterfaceName
    expected_ips: tuple[IPAddr, ...] = Field(default=(), alias="expectedIPs")


class HostEndpoint(Resource):
    API_VERSION: ClassVar[str] = "sluice.io/v1"
    KIND: ClassVar[str] = "HostEndpoint"
    NAMESPACED: ClassVar[bool] = False

    spec: HostEndpointSpec

    @property
    def node(self) -> str:
        return self.spec.node

    @property
    def interface_name(self) -> str:
        return self.spec.interface_name

    @property
    def expected_ips(self) -> tuple[IPAddress, ...]:
        return self.spec.expected_ips
