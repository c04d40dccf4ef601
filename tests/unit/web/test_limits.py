"""Abuse limits (``web/limits.py``) tried as an attacker would: a hundred sign-in requests for
one address send at most the limit's mails (counted at the real SMTP server) and are answered
429 after; per client address, per claim session, per API token, and the manager-password
lockout; a readable page (JSON under ``/api/``) with Retry-After; limits from the settings,
shared through Redis between processes, and off with RATELIMIT_ENABLED=false."""

from __future__ import annotations

import uuid

import pytest
from flask import Blueprint, jsonify

from tests.helpers import REDIS_URL, csrf_token, redis_available, service_missing
from wellness_perks import create_app, web
from wellness_perks.web import limits

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

AYESHA = "ayesha@example.com"


@pytest.fixture
def program(factory):
    program = factory.program()
    factory.creators(program, [AYESHA, "bilal@example.com"])
    factory.codes(program, ["HS-CODE-0001", "HS-CODE-0002"])
    return program


def _ask_for_links(client, address: str, times: int, **headers) -> list:
    token = csrf_token(client.get("/login").text)
    return [client.post("/login", data={"email": address, "csrf_token": token},
                        headers=headers)
            for _ in range(times)]


def _statuses(responses) -> list[int]:
    return [r.status_code for r in responses]


def test_a_hundred_sign_in_requests_for_one_address_send_at_most_the_limit(
        app, client, program, smtp_server):
    assert app.config["RATELIMIT_SIGN_IN_PER_ADDRESS"] == "3 per 15 minutes"
    # Spelled differently, it is still one address.
    spellings = [AYESHA, "Ayesha@Example.com", " AYESHA@example.com "]
    token = csrf_token(client.get("/login").text)
    responses = [client.post("/login", data={"email": spellings[i % 3], "csrf_token": token})
                 for i in range(100)]
    assert _statuses(responses) == [302] * 3 + [429] * 97
    # Every mail was sent within its request (tasks run in-process here): the count is final.
    assert len(smtp_server.to(AYESHA, "sign-in")) == 3
    refused = responses[-1]
    assert refused.headers["Retry-After"].isdigit()
    assert 0 < int(refused.headers["Retry-After"]) <= 15 * 60
    assert refused.mimetype == "text/html"
    assert "Too many sign-in requests" in refused.text and "minutes" in refused.text


def test_an_address_on_no_list_is_limited_the_same_way(client, program, smtp_server):
    """The limit says nothing about lists: an unknown address meets it exactly as a listed
    one does."""
    known = _ask_for_links(client, AYESHA, 5)
    unknown = _ask_for_links(client, "nobody@example.com", 5)
    assert _statuses(known) == _statuses(unknown) == [302] * 3 + [429] * 2
    assert known[-1].text == unknown[-1].text
    assert smtp_server.to("nobody@example.com") == []


def test_other_addresses_are_not_held_up_by_one_that_is_limited(client, program, smtp_server):
    _ask_for_links(client, AYESHA, 4)
    assert _statuses(_ask_for_links(client, "bilal@example.com", 1)) == [302]
    assert len(smtp_server.wait_for_mail("bilal@example.com", "sign-in")) == 1


@pytest.fixture
def low_limits(app_config):
    app_config.update(RATELIMIT_SIGN_IN_PER_IP="5 per 15 minutes",
                      RATELIMIT_CLAIM_PER_SESSION="3 per minute",
                      RATELIMIT_API_TOKEN="2 per minute",
                      RATELIMIT_MANAGER_PASSWORD_FAILURES="3 per 15 minutes")
    return app_config


def test_sign_in_requests_are_limited_per_client_address(low_limits, app, client, program):
    responses = [_ask_for_links(client, f"person{i}@example.com", 1)[0] for i in range(7)]
    assert _statuses(responses) == [302] * 5 + [429] * 2
    # A forged X-Forwarded-For is not believed (no trusted proxy is configured).
    spoofed = _ask_for_links(client, "person9@example.com", 1, **{"X-Forwarded-For": "10.9.9.9"})
    assert _statuses(spoofed) == [429]
    other = app.test_client()  # another client address
    other.environ_base["REMOTE_ADDR"] = "10.0.0.2"
    assert _statuses(_ask_for_links(other, "person10@example.com", 1)) == [302]


def test_behind_a_trusted_proxy_the_forwarded_address_is_counted(low_limits, app_config,
                                                                 program):
    app_config["TRUSTED_PROXY_COUNT"] = 1
    proxied = create_app(app_config)
    try:
        client = proxied.test_client()
        first = [_ask_for_links(client, f"p{i}@example.com", 1, **{"X-Forwarded-For": "10.1.1.1"})
                 [0] for i in range(6)]
        second = _ask_for_links(client, "q@example.com", 1, **{"X-Forwarded-For": "10.2.2.2"})
        assert _statuses(first) == [302] * 5 + [429]
        assert _statuses(second) == [302]
    finally:
        proxied.extensions["db_engine"].dispose()


def test_claim_posts_are_limited_per_session(low_limits, app, client, program, signed_in,
                                             another_creator):
    signed_in(AYESHA)
    token = csrf_token(client.get("/programs/headspace-6m").text)
    claims = [client.post("/programs/headspace-6m/claim", data={"csrf_token": token})
              for _ in range(5)]
    assert _statuses(claims) == [302] * 3 + [429] * 2
    assert claims[-1].headers["Retry-After"].isdigit()
    assert "Too many claim requests" in claims[-1].text
    bilal = another_creator("bilal@example.com")
    token = csrf_token(bilal.get("/programs/headspace-6m").text)
    assert bilal.post("/programs/headspace-6m/claim",
                      data={"csrf_token": token}).status_code == 302


@pytest.fixture
def api_app(low_limits):
    """An app with a token-authenticated JSON API view, as the console's will be."""
    app = create_app(low_limits)
    bp = Blueprint("api_probe", __name__, url_prefix="/api")

    @bp.route("/probe")
    @limits.per_api_token
    def probe():
        return jsonify(ok=True)

    web.register(app, bp, csrf_protected=False)
    yield app
    app.extensions["db_engine"].dispose()


def test_api_requests_are_limited_per_token_in_json(api_app):
    client = api_app.test_client()
    one = {"Authorization": "Bearer token-one"}
    answers = [client.get("/api/probe", headers=one) for _ in range(3)]
    assert _statuses(answers) == [200, 200, 429]
    refused = answers[-1]
    assert refused.is_json and refused.json["error"] == "too_many_api_requests"
    assert "Too many requests with this token" in refused.json["message"]
    assert refused.headers["Retry-After"].isdigit()
    assert client.get("/api/probe", headers={"Authorization": "Bearer token-two"}).status_code \
        == 200


def test_manager_password_failures_lock_the_address_out(low_limits, app):
    with app.test_request_context():
        limits.password_locked_out("lead@platform.example")  # nothing failed yet
        for _ in range(3):
            limits.record_password_failure("lead@platform.example")
        with pytest.raises(limits.LimitReached) as locked:
            limits.password_locked_out("lead@platform.example")
        assert locked.value.code == 429 and locked.value.error_code == "password_locked_out"
        assert 0 < locked.value.retry_after <= 15 * 60
        limits.password_locked_out("other@platform.example")  # only that address
        limits.clear_password_failures("lead@platform.example")  # a right password, once in
        limits.password_locked_out("lead@platform.example")


def test_a_limit_that_is_not_a_limit_is_refused_at_start(app_config):
    app_config["RATELIMIT_CLAIM_PER_SESSION"] = "ten a minute"
    with pytest.raises(RuntimeError, match="RATELIMIT_CLAIM_PER_SESSION"):
        create_app(app_config)


def test_limits_can_be_switched_off(app_config, program, smtp_server):
    app_config["RATELIMIT_ENABLED"] = False
    unlimited = create_app(app_config)
    try:
        client = unlimited.test_client()
        assert _statuses(_ask_for_links(client, AYESHA, 6)) == [302] * 6
        assert len(smtp_server.to(AYESHA, "sign-in")) == 6
    finally:
        unlimited.extensions["db_engine"].dispose()


@pytest.fixture
def redis_limits(app_config):
    why = redis_available()
    if why:
        service_missing("Redis", why)
    prefix = f"wp-test-limits-{uuid.uuid4().hex}"
    app_config.update(RATELIMIT_STORAGE_URI=f"{REDIS_URL}/0", RATELIMIT_KEY_PREFIX=prefix)
    yield app_config
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/0")
    keys = list(client.scan_iter(f"*{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_processes_share_the_counts_in_redis(redis_limits, app, program, smtp_server):
    """Two apps (two web processes) on one Redis: the limit holds across them."""
    assert app.config["RATELIMIT_STORAGE_URI"].startswith("redis://")
    other = create_app(redis_limits)
    try:
        here = _ask_for_links(app.test_client(), AYESHA, 2)
        there = _ask_for_links(other.test_client(), AYESHA, 2)
        assert _statuses(here + there) == [302, 302, 302, 429]
        assert len(smtp_server.to(AYESHA, "sign-in")) == 3
    finally:
        other.extensions["db_engine"].dispose()


def test_the_broker_redis_is_the_default_store(app_config):
    from config import Config

    assert Config({**app_config, "CELERY_BROKER_URL": "redis://broker:6379/3"}) \
        .RATELIMIT_STORAGE_URI == "redis://broker:6379/3"
    assert Config(app_config).RATELIMIT_STORAGE_URI == "memory://"


def test_a_store_that_does_not_answer_lets_sign_in_through(app_config, program, smtp_server):
    app_config["RATELIMIT_STORAGE_URI"] = "redis://127.0.0.1:9/0"
    storeless = create_app(app_config)
    try:
        client = storeless.test_client()
        assert _statuses(_ask_for_links(client, AYESHA, 1)) == [302]
        assert len(smtp_server.wait_for_mail(AYESHA, "sign-in")) == 1
    finally:
        storeless.extensions["db_engine"].dispose()


def test_no_request_pays_for_route_limits_that_do_not_exist(app):
    """Every limit is counted by hand; Flask-Limiter's per-request check of route limits (and
    its headers) is not run at all."""
    limiter = app.extensions["limiter"]
    assert limiter._check_request_limit not in app.before_request_funcs.get(None, [])
    assert not [hook for hook in app.after_request_funcs.get(None, [])
                if getattr(hook, "args", None) == (limiter,)]
