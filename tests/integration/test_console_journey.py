"""A manager's journey through the console in a real browser (Playwright driving Debian's
Chromium, ``/usr/bin/chromium``): sign in with a password and a TOTP code, upload a code batch
with a bad row, read the report, fix the file, commit, watch the import's progress bar, see the
dashboard change (the waiting claims served, their mails sent to a real SMTP server), export the
claims. Each console page on the way passes axe-core's checks (the copy bundled by
``axe-playwright-python``: nothing is fetched).

The app is served by a werkzeug server thread on the unit tests' migrated SQLite database, with
tasks run in-process. Screenshots go to a temporary folder; with
``SAVE_SCREENSHOTS=docs/screenshots`` the dashboard and the upload report are written there too
(the README shows them).

Without ``/usr/bin/chromium`` the test is skipped with the reason (``apt-get install -y
chromium``), and fails under REQUIRE_SERVICES=1, as a missing service does.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect, sync_playwright
from werkzeug.serving import make_server

from tests.conftest import MANAGER_PASSWORD, enroll_two_factor, totp_code
from tests.helpers import redemption_code, service_missing
from wellness_perks.db import new_session
from wellness_perks.models import Creator
from wellness_perks.services import auth, claims
from wellness_perks.services.codes import mask_code

CHROMIUM = Path("/usr/bin/chromium")
# As the machine's notes run it: headless, and nothing reaching out to Google's hosts.
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
SLUG = "mindful-6m"
MANAGER = "lead@platform.example"
WAITING = [f"creator{i}@example.com" for i in range(1, 4)]
GOOD_CODES = [f"MM-JUNE-{n:04d}" for n in range(1, 9)]
BAD_ROW = "MM JUNE 0005!"  # a space and a "!": not a code of the program's format
STEP_TIMEOUT_MS = 10_000

pytestmark = pytest.mark.integration


def require_chromium() -> None:
    if not CHROMIUM.exists():
        service_missing("Chromium", f"{CHROMIUM} is missing: apt-get install -y chromium")


@pytest.fixture
def console(app) -> Iterator[str]:
    """The app on a free local port, served by a thread; its base URL."""
    # Any file goes through the imports task (in-process here), as a large one does.
    app.config["IMPORT_IN_BACKGROUND_ROWS"] = 1
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="console-journey",
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def browser_page() -> Iterator[Page]:
    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(accept_downloads=True,
                                          viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture
def screenshots(tmp_path) -> Iterator[Callable[[Page, str], Path]]:
    """``shot(page, name)``: a full-page screenshot in the test's folder, and in
    SAVE_SCREENSHOTS (relative to the checkout) for the README's ``dashboard`` and
    ``upload-report``."""
    keep = os.environ.get("SAVE_SCREENSHOTS")
    folder = tmp_path / "screenshots"
    folder.mkdir()

    def shot(page: Page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=path, full_page=True)
        if keep and name in ("dashboard", "upload-report"):
            target = ROOT / keep
            target.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=target / f"{name}.png", full_page=True)
        return path
    yield shot


_axe = Axe()


def assert_accessible(page: Page) -> None:
    """axe-core finds nothing wrong with the page as it is now."""
    results = _axe.run(page)
    assert results.violations_count == 0, (
        f"axe-core on {page.url}:\n{results.generate_snapshot()}\n"
        + "\n".join(f"  {v['id']}: {node['target']} {node['failureSummary']}"
                    for v in results.response["violations"] for node in v["nodes"]))


def _codes_file(values: list[str]) -> dict:
    return {"name": "june-codes.txt", "mimeType": "text/plain",
            "buffer": ("\n".join(values) + "\n").encode()}


def _upload(page: Page, values: list[str]) -> None:
    page.get_by_label("File of codes").set_input_files(_codes_file(values))
    page.get_by_label("Batch name (optional)").fill("June")
    page.get_by_label("Last day they can be redeemed").fill("2099-12-31")
    page.get_by_role("button", name="Check the file").click()
    expect(page.get_by_role("heading", name="Report on june-codes.txt")).to_be_visible()


def _claims_cell(page: Page, state: str):
    return page.locator(f"#claims-{state} td")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_manager_uploads_a_batch_and_sees_the_waiting_claims_served(
        browser_page, app, factory, smtp_server, console, screenshots):
    program = factory.program(slug=SLUG, name="Mindful Minutes · 6 months", quota=10)
    factory.creators(program, WAITING)
    with app.app_context(), new_session() as session:
        manager_id = auth.create_manager(session, email=MANAGER, password=MANAGER_PASSWORD,
                                         role="manager", actor="test").id
        creator_ids = session.execute(sa.select(Creator.id).order_by(Creator.email)).scalars()
        for creator_id in creator_ids.all():  # no stock yet: each claim waits
            claims.request_claim(session, program=SLUG, creator_id=creator_id)
    secret = enroll_two_factor(app, manager_id)
    page = browser_page

    # Sign in: the password, then the authenticator's code (its next step: this one is spent).
    page.goto(f"{console}/manage/programs/{SLUG}")
    expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("Sign in to the console to see this page.")
    assert_accessible(page)
    page.get_by_label("Email address").fill(MANAGER)
    page.get_by_label("Password").fill(MANAGER_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Enter your sign-in code")).to_be_visible()
    assert_accessible(page)
    page.get_by_label("Code").fill(totp_code(secret, 1))
    page.get_by_role("button", name="Sign in").click()

    # The dashboard (where the sign-in was asked for) before: three claims wait, no stock.
    expect(page).to_have_url(f"{console}/manage/programs/{SLUG}")
    expect(_claims_cell(page, "waitlisted")).to_have_text("3")
    expect(page.get_by_text("No codes uploaded yet.")).to_be_visible()
    assert_accessible(page)

    # A batch with a bad row: the report names its line, and a plain commit is refused.
    page.get_by_role("link", name="Upload a code batch").click()
    assert_accessible(page)
    _upload(page, GOOD_CODES[:4] + [BAD_ROW] + GOOD_CODES[4:])
    invalid = page.get_by_role("table", name="Invalid rows")
    expect(invalid.locator("tbody tr")).to_have_count(1)
    expect(invalid.locator("tbody tr td").first).to_have_text("5")
    expect(page.get_by_text("1 rows are invalid: fix the file")).to_be_visible()
    assert_accessible(page)
    screenshots(page, "upload-report")
    page.get_by_role("button", name="Commit: import 8 rows").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid")

    # Fixed, uploaded again: nothing wrong, committed, and the progress bar fills.
    page.get_by_role("link", name="Code batches").click()
    _upload(page, GOOD_CODES)
    expect(page.get_by_role("table", name="Invalid rows")).to_have_count(0)
    page.get_by_role("button", name="Commit: import 8 rows").click()
    expect(page.get_by_role("heading", name="Import of june-codes.txt")).to_be_visible()
    progress = page.get_by_label("Rows done")
    expect(progress).to_have_attribute("max", "8")
    expect(progress).to_have_attribute("value", "8")  # polled: the page reloads until done
    expect(page.locator("#import-state")).to_have_text("done")
    assert_accessible(page)
    screenshots(page, "import")

    # The dashboard after: the waiting claims were served from the new stock and mailed.
    page.get_by_role("link", name="Programs").click()
    page.get_by_role("link", name="Mindful Minutes · 6 months").click()
    mails = {address: smtp_server.wait_for_mail(address, count=1)[-1] for address in WAITING}
    page.reload()
    expect(_claims_cell(page, "waitlisted")).to_have_text("0")
    expect(_claims_cell(page, "mailed")).to_have_text("3")
    expect(page.get_by_text("Codes in stock 5")).to_be_visible()
    assert_accessible(page)
    screenshots(page, "dashboard")

    # The export: one row a claim, each code masked.
    page.get_by_role("link", name="Export the claims (CSV)").click()
    assert_accessible(page)
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download the CSV").click()
    download = download_info.value
    assert download.suggested_filename == f"{SLUG}-claims.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text("utf-8"))))
    assert sorted(row["email"] for row in rows) == WAITING
    sent = {redemption_code(message) for message in mails.values()}
    assert sent <= set(GOOD_CODES) and len(sent) == 3
    assert {(row["state"], row["mail_status"]) for row in rows} == {("allocated", "sent")}
    assert sorted(row["code"] for row in rows) == sorted(mask_code(code) for code in sent)
