"""The suite's own grouping under `make test` (pytest-xdist, `--dist loadgroup`): a module whose tests share a
module-scoped fixture runs on one worker, so its server is started once. A pytest or xdist upgrade that drops the
groups (pytest 9.2 did: pytest-xdist#1386) fails here rather than doubling every shared server's start."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def shared_by_this_module() -> str:
    return "started once"


def test_a_module_with_a_shared_fixture_is_one_work_unit(shared_by_this_module, request):
    if not getattr(request.config.option, "loadgroup", False):  # set on xdist's workers under --dist loadgroup
        pytest.skip("only under pytest-xdist's --dist loadgroup (make test)")
    assert request.node.nodeid.endswith(f"@{__name__}")
