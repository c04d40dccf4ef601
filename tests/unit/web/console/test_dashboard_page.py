"""The program dashboard page at /manage/programs/<slug>: every role from viewer reads it, it
shows the service's numbers, charts as accessible SVG with their tables, and the warnings in
words; an unknown program is a 404, and nobody signed out or signed in as a creator sees it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from tests.unit.services.scenarios import pending_claims

SLUG = "headspace-6m"


def _cell(page: str, row_id: str) -> str:
    match = re.search(rf'<tr id="{row_id}">.*?<td class="number">([^<]*)</td>', page, re.S)
    assert match, row_id
    return match.group(1)


@pytest.mark.parametrize("role", ["viewer", "manager", "admin"])
def test_every_role_reads_the_dashboard_and_the_index_links_it(manager_client, factory,
                                                              role):
    factory.program(slug=SLUG, quota=1500)
    browser = manager_client(role)
    index = browser.get("/manage/")
    assert f'href="/manage/programs/{SLUG}"' in index.text
    page = browser.get(f"/manage/programs/{SLUG}")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert "1,500" in page.text


def test_the_page_shows_the_numbers_charts_and_warnings(app, manager_client, factory, session):
    program = factory.program(slug=SLUG, quota=10, country_quotas={"PK": 4})
    factory.creators(program, [f"c{i}@example.com" for i in range(3)])
    factory.codes(program, ["HS-CODE-0001", "HS-CODE-0002"])
    pending_claims(session, program, 3)  # three wait for two codes
    page = manager_client("viewer").get(f"/manage/programs/{SLUG}").text
    assert _cell(page, "claims-pending") == "3"
    assert _cell(page, "claims-allocated") == "0"
    assert "Stock will not cover the remaining quota: 2 codes in stock for 10 claims still " \
           "allowed, 8 short." in page
    assert "Stock will not cover the claims waiting: 3 claims wait for 2 codes in stock" in page
    assert "stock_below" not in page  # codes are words on the page
    assert "<th scope=\"row\">PK</th><td class=\"number\">4</td>" in page
    svgs = re.findall(r"<svg .*?</svg>", page, re.S)
    assert len(svgs) == 3
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.get("role") == "img" and root.get("aria-labelledby")
    assert page.count("the numbers as a table") == 3
    hour = datetime.now(UTC).strftime("%Y-%m-%d %H:00")
    assert f'<tr><th scope="row">{hour}</th><td class="number">3</td></tr>' in page
    assert "<script" not in page and "https://" not in page


@pytest.mark.parametrize(("role", "links"), [("viewer", False), ("manager", True),
                                             ("admin", True)])
def test_the_dashboard_links_its_uploads_for_those_who_may_upload(manager_client, factory,
                                                                   role, links):
    factory.program(slug=SLUG)
    page = manager_client(role).get(f"/manage/programs/{SLUG}").text
    assert (f'href="/manage/programs/{SLUG}/batches"' in page) is links


def test_an_unknown_program_is_not_found(manager_client):
    assert manager_client("viewer").get("/manage/programs/no-such-program").status_code == 404


def test_nobody_signed_out_reads_a_dashboard(client, factory):
    factory.program(slug=SLUG)
    response = client.get(f"/manage/programs/{SLUG}")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/manage/login?next=")


def test_a_creator_is_not_let_in(app, factory, signed_in):
    program = factory.program(slug=SLUG)
    factory.creators(program, ["creator@example.com"])
    browser = signed_in("creator@example.com")
    assert browser.get(f"/manage/programs/{SLUG}").status_code == 403
