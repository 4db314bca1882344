from __future__ import annotations

import pytest

from sluice.model import LabelSelector

LABELS = {"app": "web", "tier": "frontend", "env": "prod"}


def _selector(**fields: object) -> LabelSelector:
    return LabelSelector.model_validate(fields)


def test_empty_selector_matches_everything() -> None:
    assert LabelSelector().is_empty
    assert LabelSelector().matches({})
    assert LabelSelector().matches(LABELS)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"matchLabels": {"app": "web"}}, True),
        ({"matchLabels": {"app": "web", "tier": "backend"}}, False),
        ({"matchLabels": {"missing": ""}}, False),
        (
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x", "frontend"]}]},
            True,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend"]}]}, False),
        ({"matchExpressions": [{"key": "nope", "operator": "In", "values": ["x"]}]}, False),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}, True),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, False),
        ({"matchExpressions": [{"key": "nope", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "nope", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "nope", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "env", "operator": "In", "values": ["prod"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                ],
            },
            True,
        ),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}],
            },
            False,
        ),
    ],
)
def test_matches(selector: dict[str, object], expected: bool) -> None:
    assert _selector(**selector).matches(LABELS) is expected


def test_constructed_by_python_names() -> None:
    selector = LabelSelector(match_labels={"app": "web"})
    assert selector.matches({"app": "web"})
    assert not selector.is_empty
