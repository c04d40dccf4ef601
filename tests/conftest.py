"""Fixtures: the app on a migrated SQLite and PostgreSQL database, a real SMTP server,
and helpers to make programs, creators and codes through the real services."""

from __future__ import annotations

import io
import os
import tempfile
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from celery.signals import task_failure
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir
from sqlmodel import Session, SQLModel

from tests.helpers import (
    CODE_ENCRYPTION_KEY,
    TEST_SECRET_KEY,
    MailCatcher,
    csrf_token,
    migrated_pg_database,
    sign_in_link,
    use_sign_in_link,
)
from wellness_perks import create_app
from wellness_perks.db import get_session
from wellness_perks.migrate import upgrade
from wellness_perks.services import auth

BACKENDS = ("sqlite", "postgresql")

# Tests write nothing into the checkout: hypothesis keeps no example database, and its caches
# go to a temporary folder.
hypothesis_settings.register_profile("wellness-perks", database=None)
hypothesis_settings.load_profile("wellness-perks")
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="wellness-perks-hypothesis-"))


def _run_surfaces_on_sqlite_only(config, items) -> None:
    """A module marked ``sqlite_only`` tests a surface (pages, headers, forms, roles, the CLI's
    wording) whose behaviour is the same on both databases: its PostgreSQL twins are deselected
    (and counted as such), since the services it calls are tested on both. A test of it marked
    ``both_backends`` keeps them; ``ALL_BACKENDS=1`` keeps every twin."""
    if os.environ.get("ALL_BACKENDS") == "1":
        return
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgresql = callspec is not None and callspec.params.get("database_url") == \
            "postgresql"
        if (on_postgresql and item.get_closest_marker("sqlite_only") is not None
                and item.get_closest_marker("both_backends") is None):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite in two processes (pytest-xdist, ``--dist loadgroup``); the
    integration tests go to one of them, one after another: each starts gunicorn, Celery workers
    and beat of its own, and two such stacks at once on two cores would starve each other's
    deadlines. They are marked before xdist reads the marks, and put first once pytest has
    ordered the rest by backend, so that the other process shares out the unit tests while
    they run instead of their running alone at the end."""
    _run_surfaces_on_sqlite_only(config, items)
    integration = [item for item in items if item.get_closest_marker("integration") is not None]
    if config.pluginmanager.hasplugin("xdist"):
        for item in integration:
            item.add_marker(pytest.mark.xdist_group("integration"))
        # A module whose tests share a costly module fixture (a grown database) builds it once.
        for item in items:
            if item.get_closest_marker("one_process") is not None:
                item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    yield
    chosen = set(map(id, integration))
    items[:] = integration + [item for item in items if id(item) not in chosen]
    return None


# Tasks run in-process in the unit tests (no broker), where Celery keeps a task's exception in
# its result and the caller goes on: a task that raises fails the test that ran it instead.
_task_failures: list[str] = []
_task_failures_lock = threading.Lock()


@task_failure.connect(weak=False)
def _record_task_failure(sender=None, task_id=None, exception=None, **_kwargs) -> None:
    with _task_failures_lock:
        _task_failures.append(f"{getattr(sender, 'name', sender)}[{task_id}]: {exception!r}")


@pytest.fixture(autouse=True)
def _tasks_must_not_fail(request):
    with _task_failures_lock:
        _task_failures.clear()
    yield
    with _task_failures_lock:
        failures = list(_task_failures)
        _task_failures.clear()
    if failures and request.node.get_closest_marker("tasks_may_fail") is None:
        pytest.fail("a task run in-process raised:\n  " + "\n  ".join(failures))


@pytest.fixture(scope="session", autouse=True)
def _instance_outside_the_checkout(tmp_path_factory):
    """Whatever builds its settings from the environment alone (a command run in-process, the
    migrations' own environment) keeps its instance folder, and any key it makes, out of the
    checkout."""
    previous = os.environ.get("INSTANCE_PATH")
    os.environ["INSTANCE_PATH"] = str(tmp_path_factory.mktemp("instance"))
    yield
    if previous is None:
        os.environ.pop("INSTANCE_PATH", None)
    else:
        os.environ["INSTANCE_PATH"] = previous


# Manager passwords are hashed at scrypt's production cost (about 0.1 s a hash, the point of
# it); the tests hash and check hundreds, so in-process they use a low cost of the same scrypt.
# The product's processes that integration tests start keep the production cost, and
# test_auth checks that cost is what a stored password gets.
PRODUCTION_PASSWORD_HASH_METHOD = auth.PASSWORD_HASH_METHOD
TEST_PASSWORD_HASH_METHOD = "scrypt:1024:8:1"


@pytest.fixture(scope="session", autouse=True)
def _passwords_hashed_cheaply():
    patch = pytest.MonkeyPatch()
    patch.setattr(auth, "PASSWORD_HASH_METHOD", TEST_PASSWORD_HASH_METHOD)
    # A wrong address still costs the same hashing as a wrong password.
    patch.setattr(auth, "_NO_ONE", auth.generate_password_hash(
        "not a password of anyone", method=TEST_PASSWORD_HASH_METHOD))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def smtp_server():
    catcher = MailCatcher().start()
    yield catcher
    catcher.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    """A migrated database per backend, for the whole session (tables emptied per test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        upgrade(url)
        yield url
        return
    with migrated_pg_database() as url:
        yield url


def _empty_tables(engine: sa.Engine) -> None:
    tables = list(reversed(SQLModel.metadata.sorted_tables))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in tables)
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(table.delete())


@pytest.fixture
def app_config(database_url, tmp_path, smtp_server):
    smtp_server.clear()
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "OUTBOX_DIR": str(tmp_path / "outbox"),
        "SECRET_KEY": TEST_SECRET_KEY,
        "CODE_ENCRYPTION_KEY": CODE_ENCRYPTION_KEY,
        "BASE_URL": "http://localhost",
        "CELERY_BROKER_URL": "",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": smtp_server.port,
        "MAIL_RETRY_BASE_SECONDS": 1,
    }


@pytest.fixture
def app(app_config):
    app = create_app(app_config)
    _empty_tables(app.extensions["db_engine"])
    yield app
    app.extensions["db_engine"].dispose()


@pytest.fixture(autouse=True)
def _fresh_smtp_connections():
    """Each test starts without a pooled SMTP connection, and leaves none open."""
    from wellness_perks.services import mail

    yield
    mail.close_pools()


@pytest.fixture
def backend(database_url) -> str:
    return "postgresql" if database_url.startswith("postgresql") else "sqlite"


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def session(app):
    """A session of the test's own, outside any app context (requests get their own)."""
    with Session(app.extensions["db_engine"], expire_on_commit=False) as own:
        yield own


class Factory:
    """Makes programs, creators and codes through the real services (as the CLI does)."""

    def __init__(self, app):
        self.app = app

    def program(self, slug="headspace-6m", quota=10, opens_at=None, closes_at=None, **kw):
        from wellness_perks.services import programs

        now = datetime.now(UTC)
        with self.app.app_context():
            program = programs.create_program(
                get_session(), slug=slug, name=kw.pop("name", "Headspace · 6 months"),
                quota=quota, opens_at=opens_at or now - timedelta(hours=1),
                closes_at=closes_at or now + timedelta(days=30), actor="test", **kw)
            return program

    def creators(self, program, emails, country="PK"):
        from wellness_perks.services import imports

        rows = "handle,email,country\n" + "".join(
            f"@{e.split('@')[0]},{e},{country}\n" for e in emails)
        with self.app.app_context():
            report = imports.import_creators(get_session(), program=program,
                                             stream=io.BytesIO(rows.encode()), actor="test")
        assert report.committed and report.imported == len(emails), report.as_dict()
        return report

    def codes(self, program, values, expires_on=None):
        from wellness_perks.services import imports

        with self.app.app_context():
            report = imports.import_codes(get_session(), program=program,
                                          stream=io.BytesIO("\n".join(values).encode()),
                                          expires_on=expires_on, actor="test")
        assert report.committed and report.imported == len(values), report.as_dict()
        return report


@pytest.fixture
def factory(app):
    return Factory(app)


def sign_in(client, smtp_server, address: str) -> None:
    """Sign in through the real flow: form, mail, link."""
    page = client.get("/login")
    before = len(smtp_server.to(address, "sign-in"))
    response = client.post("/login", data={"email": address,
                                           "csrf_token": csrf_token(page.text)})
    assert response.status_code == 302, response.text
    mails = smtp_server.wait_for_mail(address, "sign-in", count=before + 1)
    link = sign_in_link(mails[-1])
    response = use_sign_in_link(client, link.replace("http://localhost", ""))
    assert response.status_code == 302 and response.headers["Location"] == "/", response.text


@pytest.fixture
def signed_in(client, smtp_server):
    def _sign_in(address: str):
        sign_in(client, smtp_server, address)
        return client
    return _sign_in


@pytest.fixture
def another_creator(app, smtp_server):
    """A second browser, signed in as another creator."""
    def _sign_in(address: str):
        other = app.test_client()
        sign_in(other, smtp_server, address)
        return other
    return _sign_in


MANAGER_PASSWORD = "correct horse battery staple"


def sign_in_manager(client, address: str, password: str = MANAGER_PASSWORD):
    """Sign a manager in through the console's real form; the response of the POST."""
    page = client.get("/manage/login")
    return client.post("/manage/login", data={"email": address, "password": password,
                                              "csrf_token": csrf_token(page.text)})


def enter_code(client, code: str, path: str = "/manage/login/code"):
    """The second step of a console sign-in (or an enrollment's confirmation) through its form."""
    page = client.get(path)
    if page.status_code != 200:  # no sign-in waits here: the token of the sign-in page
        page = client.get("/manage/login")
    return client.post(path, data={"code": code, "csrf_token": csrf_token(page.text)})


def totp_code(secret: str, steps_ahead: int = 0) -> str:
    """The TOTP code of ``secret`` now (by the service's clock), or ``steps_ahead`` steps on."""
    import pyotp

    from wellness_perks.services import two_factor

    return pyotp.TOTP(secret).at(two_factor.clock() + steps_ahead * two_factor.STEP_SECONDS)


def enroll_two_factor(app, manager_id: int) -> str:
    """Turn two-factor sign-in on for a manager through the service; their TOTP secret (the
    step of now is used up by the confirmation: sign in with ``totp_code(secret, 1)``)."""
    from wellness_perks.db import new_session
    from wellness_perks.services import two_factor

    with app.app_context(), new_session() as session:
        secret = two_factor.start_enrollment(session, manager_id=manager_id).secret
        two_factor.confirm_enrollment(session, manager_id=manager_id, code=totp_code(secret),
                                      actor="test")
    return secret


@pytest.fixture
def manager_client(app):
    """A browser signed in to the console as a new manager of the given role:
    ``manager_client("admin")`` (another call makes another manager and browser). Admins, who
    must, sign in with two factors (``two_factor=True`` gives anyone one); the browser's
    ``manager_id`` and ``totp_secret`` say who it is."""
    made = []

    def _sign_in(role: str = "manager", address: str | None = None,
                 two_factor: bool | None = None):
        from wellness_perks.db import new_session
        from wellness_perks.services import auth

        address = address or f"{role}{len(made)}@managers.example"
        with app.app_context():
            with new_session() as session:
                manager_id = auth.create_manager(session, email=address,
                                                 password=MANAGER_PASSWORD, role=role,
                                                 actor="test").id
        secret = None
        if two_factor or (two_factor is None and role == "admin"):
            secret = enroll_two_factor(app, manager_id)
        browser = app.test_client()
        response = sign_in_manager(browser, address)
        if secret:
            assert response.headers["Location"] == "/manage/login/code", response.text
            response = enter_code(browser, totp_code(secret, 1))
        assert response.status_code == 302, response.text
        assert response.headers["Location"] == "/manage/", response.text
        browser.manager_id, browser.totp_secret = manager_id, secret
        made.append(address)
        return browser
    return _sign_in
