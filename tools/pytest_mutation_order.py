"""A pytest plugin for mutation runs only (``[tool.mutmut]`` loads it): the SQLite tests run
before the PostgreSQL ones, and the property tests (hypothesis: many examples each) last, so a
mutant a quick test kills never pays for the slow ones (mutmut stops at the first failure, and
hands pytest its tests in no set order)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: ("[postgresql" in item.nodeid, "_properties" in item.nodeid))
