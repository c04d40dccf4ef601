"""A pytest plugin for mutation runs only (``[tool.mutmut]`` loads it): the SQLite tests run
before the PostgreSQL ones, so a mutant the SQLite tests kill never pays for a PostgreSQL
database (mutmut stops at the first failure, and hands pytest its tests in no set order)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: "[postgresql" in item.nodeid)
