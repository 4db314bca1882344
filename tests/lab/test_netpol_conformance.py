"""NetworkPolicy conformance, in both dataplanes: one two-node dual-stack lab (vxlan) per
dataplane with examples/lab-netpol.yaml (3 namespaces x 3 pods, as upstream's netpol e2e),
and every case of tests/lab/netpol_cases.py run on it in turn: its policies applied with
`sluice lab apply`, all 81 pairs probed at once until the expected matrix shows (or
ENFORCEMENT_WAIT passes), then the policies deleted and the all-allowed matrix waited for
before the next case. A failure prints the expected and observed matrices, the wrong pairs
with what their probes saw, and the policies applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.labfixture import running_lab
from tests.lab.netpol_cases import CASES
from tests.lab.netpol_matrix import MANIFEST, Case, Conformance, check_topology

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", params=["bpf", "iptables"])
def conformance(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Conformance]:
    dataplane: str = request.param
    with running_lab(f"np{dataplane[:3]}") as lab:
        lab.up("--dataplane", dataplane, "--routing", "vxlan", files=[MANIFEST])
        harness = Conformance(lab, Path(tmp_path_factory.mktemp(f"netpol-{dataplane}")))
        check_topology(harness.state)
        yield harness


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_network_policy(conformance: Conformance, case: Case) -> None:
    conformance.run(case)
