"""``wellness-perks health``: the checks of ``/healthz``, one line each (or ``--json``); exit 0
only when the status is ok, 1 when degraded or in error."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.unit.services.scenarios import lost_claims
from wellness_perks import create_app


def test_health_ok_exits_0(runner):
    result = runner.invoke(args=["health"])
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert lines[0] == "health: ok"
    assert "database: ok" in lines
    assert "broker: not_configured" in lines
    assert "claims: ok pending=0 oldest_pending_seconds=0.0" in lines
    assert any(line.startswith("mails: ok queued=0 sending=0 failed=0") for line in lines)


def test_health_json(runner):
    result = runner.invoke(args=["health", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    document = json.loads(result.stdout)
    assert document["status"] == "ok"
    assert document["grace_seconds"] == 120
    assert document["checks"]["database"] == {"status": "ok"}
    assert document["checks"]["claims"] == {"status": "ok", "pending": 0,
                                            "oldest_pending_seconds": 0.0}


def test_health_degraded_exits_1(runner, factory, session):
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    lost_claims(session, program, ["a@example.com"],
                requested_at=datetime.now(UTC) - timedelta(seconds=600))
    result = runner.invoke(args=["health"])
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert lines[0] == "health: degraded"
    [claims] = [line for line in lines if line.startswith("claims:")]
    assert claims.startswith("claims: degraded pending=1 oldest_pending_seconds=6")
    result = runner.invoke(args=["health", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["checks"]["claims"]["status"] == "degraded"


def test_health_grace_is_a_setting(app_config, factory, session):
    app_config["HEALTH_GRACE_SECONDS"] = 900
    app = create_app(app_config)
    program = factory.program(quota=10)
    factory.creators(program, ["a@example.com"])
    lost_claims(session, program, ["a@example.com"],
                requested_at=datetime.now(UTC) - timedelta(seconds=600))
    result = app.test_cli_runner().invoke(args=["health"])
    assert result.exit_code == 0, result.output
    app.extensions["db_engine"].dispose()


def test_health_database_down_exits_1(app_config):
    app_config["DATABASE_URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    app = create_app(app_config)
    result = app.test_cli_runner().invoke(args=["health"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stdout.splitlines()[:2] == ["health: error",
                                              "database: error error=OperationalError"]
    app.extensions["db_engine"].dispose()


def test_health_broker_down_exits_1(app_config):
    app_config["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"
    app = create_app(app_config)
    result = app.test_cli_runner().invoke(args=["health"])
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert lines[0] == "health: degraded"
    assert "broker: error error=ConnectionError" in lines
    assert "queues: degraded error=broker" in lines
    app.extensions["db_engine"].dispose()
