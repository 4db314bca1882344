from __future__ import annotations

from pathlib import Path

import pytest
from manifest_helpers import MANIFESTS


@pytest.fixture
def manifests() -> Path:
    return MANIFESTS
