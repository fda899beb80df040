"""Fixtures shared by the namespace tests."""

from __future__ import annotations

import pytest
from netlab import GO_BUILDS, require_go_build


@pytest.fixture(params=GO_BUILDS)
def go_build(request: pytest.FixtureRequest) -> str:
    """Each wireguard-go build in turn (test ids `[go-debian]`, `[go-current]`); a build
    that is not on this machine skips, naming where it was looked for."""
    build: str = request.param
    require_go_build(build)
    return build
