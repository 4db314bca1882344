"""An endpoint's effective policy: its rules in evaluation order and the identities their
peers resolve to (from the agent's compiled PolicyState), with what the datapath holds for
it (entries and the flows each rule decided, from the pinned policy map)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sluice.compile.failsafe import PROTOCOL_NAMES
from sluice.compile.policy import (
    GLOBAL_DEFAULT_DENY_RULE_ID,
    KUBERNETES_DEFAULT_DENY_RULE_ID,
    RESERVED_RULE_ORIGINS,
)
from sluice.compile.policyflat import RuleKeys, rule_keys
from sluice.compile.policytypes import (
    CATCH_ALL_RANK,
    CompiledRule,
    Direction,
    EndpointPolicy,
    Identity,
    IdentityInfo,
    PolicyState,
)
from sluice.datapath import policy as dp
from sluice.loader.maps import Map


def find_endpoint(state: PolicyState, name: str) -> EndpointPolicy | None:
    return next((e for e in state.endpoints if e.name == name), None)


def _identity_doc(identity: int, state: PolicyState) -> dict[str, Any]:
    info = state.identities.get(identity)
    if identity == Identity.ANY:
        return {"id": 0, "name": "any"}
    return {"id": identity, "name": str(info or IdentityInfo(identity))}


def _rule_doc(rule: CompiledRule, tier: str, state: PolicyState,
              keys: RuleKeys) -> dict[str, Any]:
    identities = sorted(keys.of(rule.peers))
    return {
        "ruleId": rule.rule_id,
        "tier": tier,
        "action": rule.action.name.capitalize(),
        "protocol": "any" if rule.protocol is None
        else PROTOCOL_NAMES.get(rule.protocol, str(rule.protocol)).upper(),
        "ports": [str(p) for p in rule.ports] or ["any"],
        "peers": [_identity_doc(i, state) for i in identities],
        "origin": rule.origin,
    }


def endpoint_document(state: PolicyState, endpoint: EndpointPolicy) -> dict[str, Any]:
    keys = rule_keys(state)
    directions = []
    for direction in sorted(endpoint.directions):
        policy = endpoint.directions[direction]
        rules = [_rule_doc(r, "global", state, keys) for r in policy.global_rules]
        if policy.global_selected:
            rules.append(_catch_all("global"))
        rules += [_rule_doc(r, "kubernetes", state, keys) for r in policy.kubernetes_rules]
        if policy.kubernetes_isolated:
            rules.append(_catch_all("kubernetes"))
        directions.append({"direction": direction.name.lower().replace("_", "-"),
                           "rules": rules})
    return {
        "endpoint": endpoint.name,
        "policyId": endpoint.policy_id,
        "interface": endpoint.interface,
        "addresses": [str(a) for a in endpoint.addresses],
        "identity": _identity_doc(endpoint.identity, state),
        "hostEndpoint": endpoint.host_endpoint,
        "directions": directions,
    }


def _catch_all(tier: str) -> dict[str, Any]:
    rule_id = GLOBAL_DEFAULT_DENY_RULE_ID if tier == "global" else KUBERNETES_DEFAULT_DENY_RULE_ID
    return {"ruleId": rule_id, "tier": tier, "action": "Deny", "protocol": "any",
            "ports": ["any"], "peers": [{"id": 0, "name": "any"}],
            "origin": RESERVED_RULE_ORIGINS[rule_id], "rank": CATCH_ALL_RANK}


def datapath_counts(pin_dir: str, policy_id: int) -> dict[str, Any]:
    """Entries the pinned policy map holds for POLICY_ID, and flows decided per rule id."""
    path = os.path.join(pin_dir, dp.POLICY_MAP)
    policy_map = Map.from_pin(path, dp.PolicyKey, dp.PolicyVerdict)
    try:
        return summarize(policy_id, policy_map.lookup_batch())
    finally:
        policy_map.close()


def summarize(policy_id: int, entries: Iterable[tuple[dp.PolicyKey, dp.PolicyVerdict]]
              ) -> dict[str, Any]:
    count = 0
    flows: Counter[int] = Counter()
    by_direction: Counter[str] = Counter()
    for key, verdict in entries:
        if key.endpoint != policy_id:
            continue
        count += 1
        by_direction[Direction(key.direction).name.lower().replace("_", "-")] += 1
        flows[verdict.rule_id] += verdict.flows
    return {"entries": count, "entriesByDirection": dict(by_direction),
            "flowsByRule": {str(rule): n for rule, n in sorted(flows.items())}}


def render(doc: dict[str, Any]) -> str:
    """The text form of `sluice bpf policy show`."""
    identity = doc["identity"]
    lines = [f"endpoint {doc['endpoint']}  interface {doc['interface']} "
             f"(policy id {doc['policyId']})  addresses {', '.join(doc['addresses'])}",
             f"identity {identity['id']} {identity['name']}"]
    datapath = doc.get("datapath")
    flows = datapath["flowsByRule"] if datapath else {}
    if datapath:
        lines.append(f"datapath: {datapath['entries']} policy entries")
    if not doc["directions"]:
        lines.append("no policy applies: all traffic allowed")
    for direction in doc["directions"]:
        lines.append(f"{direction['direction']}:")
        for position, rule in enumerate(direction["rules"], start=1):
            peers = ", ".join(f"{p['id']} {p['name']}" if p["id"] else "any"
                              for p in rule["peers"]) or "nothing"
            counted = flows.get(str(rule["ruleId"]))
            decided = f"  [{counted} flows]" if counted else ""
            lines.append(f"  {position:>3}. {rule['tier']:<10} {rule['action']:<5} "
                         f"{rule['protocol']}/{','.join(rule['ports'])}  peers: {peers}"
                         f"{decided}")
            lines.append(f"       rule {rule['ruleId']}: {rule['origin']}")
    return "\n".join(lines)
