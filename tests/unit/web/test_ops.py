"""``GET /healthz`` (``web/ops.py``): 200 when the database and the broker answer, 503 naming
what did not."""

from __future__ import annotations

from wellness_perks import create_app


def test_healthz_answers_when_the_database_does(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["broker"].startswith("not configured")


def test_healthz_names_what_failed(app_config):
    app_config["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    app = create_app(app_config)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["status"] == "error"
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["broker"].startswith("error")
    app.extensions["db_engine"].dispose()

