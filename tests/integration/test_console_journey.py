"""A manager's journey through the console in a real browser (Playwright driving Debian's
Chromium, ``/usr/bin/chromium``): sign in with a password and a TOTP code, upload a code batch
with a bad row, read the report, fix the file, commit, watch the import's progress bar move (and
stay through a reload), see the dashboard change (the waiting claims served, their mails sent to
a real SMTP server), export the claims. Each console page on the way passes axe-core's checks
(the copy bundled by ``axe-playwright-python``: nothing is fetched).

The app is served by a werkzeug server thread on the unit tests' migrated PostgreSQL database,
its tasks published to Redis for a real ``celery worker`` process (every queue, the app's
settings): a file of ``IMPORT_IN_BACKGROUND_ROWS`` rows or more is imported by the worker (the
``imports`` queue), its progress written as it goes (every tenth of a second:
``IMPORT_PROGRESS_SECONDS``). The batch is one of 10,000 codes, so that the bar has steps to
show; while the test watches, a transaction of its own holds the program's row, as an edit of
the program would: the import writes its codes and its progress, and waits at its last write
(the program's stock counter) until the test lets it go. What the journey starts from (the
program, the creators, their waiting claims, the manager) is made in the test's process through
the services.

Screenshots go to a temporary folder; with ``SAVE_SCREENSHOTS=docs/screenshots`` the dashboard
and the upload report are written there too (the README shows them).

Without ``/usr/bin/chromium`` the test is skipped with the reason (``apt-get install -y
chromium``), and fails under REQUIRE_SERVICES=1, as a missing service does.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from axe_playwright_python.sync_playwright import Axe
from flask import Flask
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect, sync_playwright
from werkzeug.serving import make_server

from harness.stack import product_env
from harness.waiting import wait_for
from tests.conftest import MANAGER_PASSWORD, Factory, enroll_two_factor, totp_code
from tests.helpers import (
    CODE_ENCRYPTION_KEY,
    TEST_SECRET_KEY,
    redemption_code,
    service_missing,
)
from tests.integration.conftest import (
    APP_SETTINGS,
    Stack,
    _claim_redis_database,
    _release_redis,
    require_stack_services,
)
from wellness_perks import create_app
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
# The import writes how far it got every tenth of a second (IMPORT_PROGRESS_SECONDS), as it
# reads its file, 64 KiB at a time: 10,000 codes of 31 characters are five reads over about
# half a second here, and still give a step strictly between the ends on a machine several
# times faster.
ROWS = 10_000
SETTINGS = {"IMPORT_IN_BACKGROUND_ROWS": 1000, "IMPORT_PROGRESS_SECONDS": 0.1}
GOOD_CODES = [f"MINDFUL-MINUTES-2026-JUNE-{n:05d}" for n in range(1, ROWS + 1)]
# Spaces and a "!": not a code of the program's format.
BAD_ROW = "MINDFUL MINUTES 2026 JUNE 00005!"
STEP_TIMEOUT_MS = 10_000
WORKER = "celery"
IMPORT_TIMEOUT = 60  # seconds for the worker to take the import and show it under way

pytestmark = pytest.mark.integration


def require_chromium() -> None:
    if not CHROMIUM.exists():
        service_missing("Chromium", f"{CHROMIUM} is missing: apt-get install -y chromium")


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A Redis database of the test's own."""
    require_chromium()  # before anything is started for nothing
    require_stack_services()
    url, client = _claim_redis_database()
    yield url
    _release_redis(client)


@pytest.fixture
def app_config(app_config, broker_url) -> dict:
    """The unit tests' settings, with the broker: the app's tasks go to the worker process,
    which imports a committed file of 1,000 rows or more, its progress every tenth of a
    second."""
    return app_config | {"CELERY_BROKER_URL": broker_url} | SETTINGS


@pytest.fixture
def worker(app, smtp_server, broker_url, tmp_path) -> Iterator[Stack]:
    """``celery -A worker worker`` (every queue) as an operator starts it, with the app's
    database, keys, upload folder, broker and SMTP server. Started, not waited for: it boots
    while the journey signs in and uploads (the test waits for it before its commit)."""
    config = app.config
    env = product_env(database_url=config["DATABASE_URL"], broker_url=broker_url,
                      smtp_port=smtp_server.port, base_url=config["BASE_URL"],
                      mail_from=config["MAIL_FROM"], workdir=tmp_path / "worker",
                      blocked=APP_SETTINGS) | {
        "SECRET_KEY": TEST_SECRET_KEY, "CODE_ENCRYPTION_KEY": CODE_ENCRYPTION_KEY,
        "UPLOAD_DIR": config["UPLOAD_DIR"]} | {name: str(value) for name, value in SETTINGS.items()}
    st = Stack(env=env, tmp=tmp_path, base_url=config["BASE_URL"],
               database_url=config["DATABASE_URL"], mail=smtp_server)
    st.start_worker(WORKER, 1, wait=False)
    try:
        yield st
        # Nothing is left for it to finish: killed, not stopped gracefully (seconds a run).
        for service in st.services.values():
            service.kill()
    finally:
        st.stop_all()
        if st.engine is not None:
            st.engine.dispose()


@pytest.fixture
def setup_app(app_config) -> Iterator[Flask]:
    """The app on the same database with its tasks in-process, to make what the journey starts
    from through the services (the claims are waitlisted at once: nothing is in stock)."""
    app = create_app(app_config | {"CELERY_BROKER_URL": ""})
    yield app
    app.extensions["db_engine"].dispose()


@pytest.fixture
def console(app) -> Iterator[str]:
    """The app on a free local port, served by a thread; its base URL."""
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


@contextlib.contextmanager
def program_row_held(stack: Stack, slug: str) -> Iterator[None]:
    """The program's row locked by an open transaction, as an edit of the program holds it:
    an import meanwhile writes its codes and its progress, and waits to raise the program's
    stock counter (its last write, just before its commit) until the transaction ends."""
    with stack.db() as conn:
        transaction = conn.begin()
        try:
            held = conn.execute(sa.text("UPDATE program SET name = name WHERE slug = :slug"),
                                {"slug": slug}).rowcount
            assert held == 1
            yield
        finally:
            transaction.rollback()


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


_READ_BAR = """() => {
  const bar = document.getElementById("import-progress");
  const state = document.getElementById("import-state");
  return bar && state ? [state.textContent, Number(bar.getAttribute("value")),
                         Number(bar.getAttribute("max"))] : null;
}"""


def _bar(page: Page) -> tuple[str, int, int] | None:
    """What the import's page shows now: its state's words, the bar's value and its end; None
    while the page is being loaded again (it is once the import is over)."""
    try:
        shown = page.evaluate(_READ_BAR)
    except PlaywrightError:  # the document went away under the read: the next poll sees the new
        return None
    return tuple(shown) if shown else None


def _watch_bar(page: Page, shows: Callable[[str, int, int], bool], what: str) -> tuple:
    """Poll the page (with a deadline) until its bar ``shows(state, value, end)``; that."""
    return wait_for(lambda: (bar := _bar(page)) is not None and shows(*bar) and bar,
                    timeout=IMPORT_TIMEOUT, interval=0.05, what=what)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_manager_uploads_a_batch_and_sees_the_waiting_claims_served(
        worker, browser_page, setup_app, console, smtp_server, screenshots):
    factory = Factory(setup_app)
    program = factory.program(slug=SLUG, name="Mindful Minutes · 6 months", quota=10)
    factory.creators(program, WAITING)
    with setup_app.app_context(), new_session() as session:
        manager_id = auth.create_manager(session, email=MANAGER, password=MANAGER_PASSWORD,
                                         role="manager", actor="test").id
        creator_ids = session.execute(sa.select(Creator.id).order_by(Creator.email)).scalars()
        for creator_id in creator_ids.all():  # no stock yet: each claim waits
            claims.request_claim(session, program=SLUG, creator_id=creator_id)
    secret = enroll_two_factor(setup_app, manager_id)
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
    commit = page.get_by_role("button", name=f"Commit: import {ROWS:,} rows")
    commit.click()
    expect(page.get_by_role("alert")).to_contain_text("invalid")

    # Fixed, uploaded again: nothing wrong, committed; the worker imports it.
    page.get_by_role("link", name="Code batches").click()
    _upload(page, GOOD_CODES)
    expect(page.get_by_role("table", name="Invalid rows")).to_have_count(0)
    progress = page.get_by_label("Rows done")
    worker.wait_worker_ready(worker.services[WORKER], timeout=60)
    with program_row_held(worker, SLUG):
        commit.click()
        expect(page.get_by_role("heading", name="Import of june-codes.txt")).to_be_visible()
        expect(progress).to_have_attribute("max", str(ROWS))
        # The page follows the import in place: its bar moves off zero, short of the end.
        _state, moved, _end = _watch_bar(
            page, lambda state, value, end: state == "importing" and 0 < value < end,
            "the progress bar to stand between its ends")
        screenshots(page, "import-running")
        assert_accessible(page)  # nothing reloads it on a timer (axe-core's meta-refresh)
        # A reload mid-import (the manager's own): the bar is there again, as far or further.
        page.reload()
        state, value, end = _watch_bar(page, lambda *_: True, "the reloaded import page")
        assert (state, end) == ("importing", ROWS) and moved <= value <= ROWS
    # The program's row is free: the import raises the stock, commits, and the page says so.
    expect(progress).to_have_attribute("value", str(ROWS))
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
    expect(page.get_by_text(f"Codes in stock {ROWS - 3:,}")).to_be_visible()
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
