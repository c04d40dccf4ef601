"""``GET /healthz`` and ``GET /metrics`` (``web/ops.py``): the status for anybody, the details
and the metrics for an operator only (the bearer OPS_TOKEN, or a local request that came through
no proxy); 503 only when the database does not answer; degraded, not down, for a broker that
does not answer (also one that hangs), or for work owed past the grace period."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.services.scenarios import lost_claims
from wellness_perks import create_app
from wellness_perks.models import MailStatus, OutboundEmail

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

TOKEN = "an-operator-token-of-some-length"
REMOTE = {"REMOTE_ADDR": "203.0.113.9"}
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


@pytest.fixture
def ops_app(app_config):
    app_config["OPS_TOKEN"] = TOKEN
    app = create_app(app_config)
    from tests.conftest import _empty_tables

    _empty_tables(app.extensions["db_engine"])
    yield app
    app.extensions["db_engine"].dispose()


def get(app, path, environ=LOCAL, **headers):
    return app.test_client().get(path, environ_base=environ, headers=headers)


# --------------------------------------------------------------------------- who sees what


def test_healthz_tells_anybody_the_status_only(ops_app):
    response = get(ops_app, "/healthz", REMOTE)
    assert response.status_code == 200
    assert response.json == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_details_for_a_local_request(ops_app):
    response = get(ops_app, "/healthz", LOCAL)
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "ok"
    assert body["grace_seconds"] == 120
    assert body["checks"]["database"] == {"status": "ok"}
    assert body["checks"]["broker"] == {"status": "not_configured"}
    assert body["checks"]["claims"] == {"status": "ok", "pending": 0,
                                        "oldest_pending_seconds": 0.0}
    assert body["checks"]["mails"]["status"] == "ok"


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_a_local_request_through_a_proxy_is_anybody(ops_app, header):
    response = get(ops_app, "/healthz", LOCAL, **{header: "203.0.113.9"})
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_ipv6_loopback_is_local(ops_app):
    assert "checks" in get(ops_app, "/healthz", {"REMOTE_ADDR": "::1"}).json


def test_the_operator_token_shows_the_details_from_anywhere(ops_app):
    response = get(ops_app, "/healthz", REMOTE, Authorization=f"Bearer {TOKEN}")
    assert response.json["checks"]["database"] == {"status": "ok"}
    forwarded = get(ops_app, "/healthz", LOCAL, Authorization=f"Bearer {TOKEN}",
                    **{"X-Forwarded-For": "203.0.113.9"})
    assert "checks" in forwarded.json


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                                           f"Basic {TOKEN}", "Bearer", TOKEN])
def test_a_wrong_token_is_anybody(ops_app, authorization):
    response = get(ops_app, "/healthz", REMOTE, Authorization=authorization)
    assert response.json == {"status": "ok"}


def test_without_an_ops_token_no_bearer_is_an_operator(app):
    assert app.config["OPS_TOKEN"] == ""
    response = get(app, "/healthz", REMOTE, Authorization="Bearer ")
    assert response.json == {"status": "ok"}


def test_a_short_ops_token_is_refused(app_config, monkeypatch):
    monkeypatch.setenv("OPS_TOKEN", "short")
    with pytest.raises(RuntimeError, match="OPS_TOKEN must be at least 16 characters"):
        create_app(app_config)


# --------------------------------------------------------------------------- what it says


def test_a_database_that_does_not_answer_is_503(app_config):
    app_config["DATABASE_URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    app = create_app(app_config)
    response = get(app, "/healthz", REMOTE)
    assert response.status_code == 503
    assert response.json == {"status": "error"}
    details = get(app, "/healthz", LOCAL).json
    assert details["checks"]["database"]["status"] == "error"
    assert details["checks"]["claims"] == {"status": "error", "error": "database"}
    app.extensions["db_engine"].dispose()


def test_a_broker_that_does_not_answer_is_degraded_not_down(app_config):
    app_config["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    app = create_app(app_config)
    response = get(app, "/healthz", LOCAL)
    assert response.status_code == 200
    assert response.json["status"] == "degraded"
    assert response.json["checks"]["database"] == {"status": "ok"}
    assert response.json["checks"]["broker"] == {"status": "error", "error": "ConnectionError"}
    assert response.json["checks"]["queues"] == {"status": "degraded", "error": "broker"}
    # Anybody is told the node takes claims: the broker's state is the operators' business.
    assert get(app, "/healthz", REMOTE).json == {"status": "ok"}
    app.extensions["db_engine"].dispose()


@pytest.fixture
def hung_broker():
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_hung_broker_makes_healthz_degraded_at_once(app_config, hung_broker):
    """The broker's probe gives up on its own (its TimeoutError is the answer): the request is
    answered, not left waiting. No duration is asserted: a request that hangs fails at the
    deadline instead of holding the suite."""
    app_config["CELERY_BROKER_URL"] = hung_broker
    app = create_app(app_config)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        response = pool.submit(get, app, "/healthz", LOCAL).result(timeout=60)
    finally:
        pool.shutdown(wait=False)  # a request left hanging is not waited for
    assert response.status_code == 200
    assert response.json["status"] == "degraded"
    assert response.json["checks"]["broker"] == {"status": "error", "error": "TimeoutError"}
    app.extensions["db_engine"].dispose()


def test_anybody_is_told_only_whether_the_database_answers(app_config, monkeypatch):
    from wellness_perks import broker

    app_config["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # down: degraded
    app = create_app(app_config)

    def asked(*_args, **_kwargs):
        raise AssertionError("an anonymous /healthz asked the broker")

    with monkeypatch.context() as patched:
        for name in ("ping", "queue_depths", "consumers"):
            patched.setattr(broker, name, asked)
        response = get(app, "/healthz", REMOTE)
    assert (response.status_code, response.json) == (200, {"status": "ok"})
    assert get(app, "/healthz", LOCAL).json["status"] == "degraded"
    app.extensions["db_engine"].dispose()


def test_a_claim_pending_past_the_grace_period_is_degraded(ops_app, factory, session):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com", "b@example.com"])
    lost_claims(session, program, ["a@example.com"],
                requested_at=datetime.now(UTC) - timedelta(seconds=300))
    lost_claims(session, program, ["b@example.com"], requested_at=datetime.now(UTC))
    body = get(ops_app, "/healthz").json
    assert body["status"] == "degraded"
    claims = body["checks"]["claims"]
    assert claims["status"] == "degraded" and claims["pending"] == 2
    assert 300 <= claims["oldest_pending_seconds"] < 400


def test_a_claim_pending_within_the_grace_period_is_ok(ops_app, factory, session):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    lost_claims(session, program, ["a@example.com"],
                requested_at=datetime.now(UTC) - timedelta(seconds=60))
    body = get(ops_app, "/healthz").json
    assert body["status"] == "ok"
    assert body["checks"]["claims"]["pending"] == 1
    assert 60 <= body["checks"]["claims"]["oldest_pending_seconds"] < 120


def _mail(session, **values):
    row = OutboundEmail(kind="sign_in", to_email="a@example.com", **values)
    session.add(row)
    session.commit()
    return row


@pytest.mark.parametrize("values", [
    {"created_at": datetime.now(UTC) - timedelta(seconds=600)},  # never attempted
    {"next_attempt_at": datetime.now(UTC) - timedelta(seconds=600), "attempts": 1},  # a retry
    # an attempt that outlived its lease (300 s) by more than the grace period
    {"status": MailStatus.sending.value,
     "sending_started_at": datetime.now(UTC) - timedelta(seconds=600)},
], ids=["new", "retry", "lease"])
def test_a_mail_overdue_past_the_grace_period_is_degraded(ops_app, session, values):
    _mail(session, **values)
    body = get(ops_app, "/healthz").json
    assert body["status"] == "degraded"
    assert body["checks"]["mails"]["status"] == "degraded"


def test_a_mail_waiting_for_its_retry_or_in_its_lease_is_ok(ops_app, session):
    _mail(session, next_attempt_at=datetime.now(UTC) + timedelta(hours=1), attempts=3,
          created_at=datetime.now(UTC) - timedelta(hours=2))
    _mail(session, status=MailStatus.sending.value,
          sending_started_at=datetime.now(UTC) - timedelta(seconds=100))  # < lease + grace
    _mail(session, status=MailStatus.failed.value, last_error="550 no such user")
    body = get(ops_app, "/healthz").json
    assert body["status"] == "ok", body
    assert body["checks"]["mails"] == {"status": "ok", "queued": 1, "sending": 1, "failed": 1,
                                       "oldest_due_seconds": 0.0,
                                       "oldest_sending_seconds": pytest.approx(100, abs=15),
                                       "possibly_sent": {}}


def test_mails_marked_possibly_sent_are_counted_per_program(ops_app, factory, session):
    """A code mail whose attempt was cut off mid-send (the sweeper marked it) may have reached
    its creator twice: counted by program, whether sent again since or not (as the failed are
    counted until resent), in the details, the metrics and the command; an operator's
    business, not degrading. A sign-in mail has no program and is not counted."""
    from sqlmodel import select

    from wellness_perks.models import Claim, Creator

    now = datetime.now(UTC)
    headspace = factory.program(slug="headspace-6m", quota=10)
    calm = factory.program(slug="calm-1y", name="Calm · 1 year", quota=10)
    factory.program(slug="quiet-3m", name="Quiet · 3 months", quota=10)  # no mail at all
    factory.creators(headspace, ["a@example.com", "b@example.com", "c@example.com"])
    factory.creators(calm, ["d@example.com"])
    lost_claims(session, headspace, ["a@example.com", "b@example.com", "c@example.com"],
                requested_at=now)
    lost_claims(session, calm, ["d@example.com"], requested_at=now)
    claim_of = dict(session.exec(select(Creator.email, Claim.id)
                                 .join(Claim, Claim.creator_id == Creator.id)).all())

    def code_mail(email, **values):
        session.add(OutboundEmail(kind="redemption", to_email=email, claim_id=claim_of[email],
                                  attempts=2, **values))

    code_mail("a@example.com", status=MailStatus.sent.value, sent_at=now,
              possibly_sent_at=now - timedelta(minutes=5))  # sent again since
    code_mail("b@example.com", possibly_sent_at=now,  # waiting for its next attempt
              next_attempt_at=now + timedelta(minutes=1))
    code_mail("c@example.com", status=MailStatus.failed.value, last_error="550 no such user")
    code_mail("d@example.com", status=MailStatus.sent.value, sent_at=now, possibly_sent_at=now)
    session.commit()
    _mail(session, status=MailStatus.sent.value, sent_at=now, possibly_sent_at=now)  # sign-in

    body = get(ops_app, "/healthz").json
    assert body["status"] == "ok", body
    assert body["checks"]["mails"]["possibly_sent"] == {"calm-1y": 1, "headspace-6m": 2}
    assert body["checks"]["mails"]["failed"] == 1
    samples = _samples(get(ops_app, "/metrics"))
    assert {program: samples[f'wellness_perks_mails_possibly_sent{{program="{program}"}}']
            for program in ("headspace-6m", "calm-1y", "quiet-3m")} == {
        "headspace-6m": 2, "calm-1y": 1, "quiet-3m": 0}
    result = ops_app.test_cli_runner().invoke(args=["health"])
    assert result.exit_code == 0, result.output
    [mails] = [line for line in result.stdout.splitlines() if line.startswith("mails:")]
    assert mails.endswith(" possibly_sent=calm-1y:1;headspace-6m:2"), mails


# --------------------------------------------------------------------------- /metrics


def test_metrics_are_for_operators_only(ops_app):
    response = get(ops_app, "/metrics", REMOTE)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert b"wellness_perks" not in response.data
    forwarded = get(ops_app, "/metrics", LOCAL, **{"X-Forwarded-For": "203.0.113.9"})
    assert forwarded.status_code == 401
    assert get(ops_app, "/metrics", REMOTE, Authorization="Bearer nope-nope-nope-nope"
               ).status_code == 401
    assert get(ops_app, "/metrics", REMOTE, Authorization=f"Bearer {TOKEN}").status_code == 200
    assert get(ops_app, "/metrics", LOCAL).status_code == 200


def _samples(response) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_metrics_content(ops_app, factory, session):
    program = factory.program(quota=2)
    factory.creators(program, [f"c{i}@example.com" for i in range(4)])
    factory.codes(program, ["HS-CODE-0001", "HS-CODE-0002", "HS-CODE-0003"])
    client = ops_app.test_client()
    from wellness_perks.db import get_session
    from wellness_perks.services import claims

    with ops_app.app_context():
        for creator_id in (1, 2, 3):  # two allocated (and mailed), one waitlisted
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
    lost_claims(session, program, ["c3@example.com"],
                requested_at=datetime.now(UTC) - timedelta(seconds=42))
    _mail(session, status=MailStatus.failed.value, last_error="550 no such user")
    samples = _samples(client.get("/metrics", environ_base=LOCAL))
    slug = program.slug
    assert samples[f'wellness_perks_claims{{program="{slug}",state="allocated"}}'] == 2
    assert samples[f'wellness_perks_claims{{program="{slug}",state="waitlisted"}}'] == 1
    assert samples[f'wellness_perks_claims{{program="{slug}",state="pending"}}'] == 1
    assert samples[f'wellness_perks_claims{{program="{slug}",state="refused"}}'] == 0
    assert samples[f'wellness_perks_allocations{{program="{slug}"}}'] == 2
    assert samples[f'wellness_perks_quota{{program="{slug}"}}'] == 2
    assert samples[f'wellness_perks_codes_in_stock{{program="{slug}"}}'] == 1
    assert samples['wellness_perks_mails{state="failed"}'] == 1
    assert samples['wellness_perks_mails{state="queued"}'] == 0
    assert 'wellness_perks_mails{state="sent"}' not in samples
    assert 42 <= samples["wellness_perks_oldest_pending_claim_seconds{}"] < 120
    assert samples["wellness_perks_oldest_due_mail_seconds{}"] == 0
    assert samples['wellness_perks_health{status="ok"}'] == 1
    assert samples['wellness_perks_health{status="degraded"}'] == 0


@pytest.mark.tasks_may_fail
def test_metrics_count_task_failures(ops_app, monkeypatch):
    from wellness_perks import broker, dispatch
    from wellness_perks.services import sweeper

    with ops_app.app_context():
        before = broker.task_failures().get(dispatch.SWEEP, 0)

    def broken(_session):
        raise RuntimeError("the sweep broke")

    monkeypatch.setattr(sweeper, "sweep", broken)
    with ops_app.app_context():
        ops_app.extensions["celery"].tasks[dispatch.SWEEP].apply()
    samples = _samples(get(ops_app, "/metrics"))
    assert samples[f'wellness_perks_task_failures_total{{task="{dispatch.SWEEP}"}}'] \
        == before + 1


def test_health_counts_no_sent_mail(ops_app, session):
    """Counting the mails sent would read every mail ever sent: the figures leave them out."""
    _mail(session, status=MailStatus.sent.value, sent_at=datetime.now(UTC))
    body = get(ops_app, "/healthz").json
    assert "sent" not in body["checks"]["mails"]
    assert body["checks"]["mails"]["queued"] == 0


def test_metrics_with_the_database_down_say_error(app_config):
    app_config["DATABASE_URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    app = create_app(app_config)
    samples = _samples(get(app, "/metrics"))
    assert samples['wellness_perks_health{status="error"}'] == 1
    assert samples['wellness_perks_health{status="ok"}'] == 0
    assert not any(name.startswith("wellness_perks_claims") for name in samples)
    app.extensions["db_engine"].dispose()
