"""The minimal-endpoint ceiling: a Flask app with one route doing one ``SELECT 1``, served by
the same gunicorn settings as the product (``gunicorn "bench.ceiling_app:create_app()"``).

It takes the same request the claim takes (a POST with a session-sized cookie and a form body)
and answers 200 with a few bytes: what any endpoint of the product costs at the least.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from flask import Flask


def create_app() -> Flask:
    url = os.environ["DATABASE_URL"]
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    # The product's pool size; no pre-ping (a minimal endpoint makes one round trip).
    engine = sa.create_engine(url, pool_size=5, max_overflow=10)
    app = Flask(__name__)

    @app.route("/ceiling", methods=["GET", "POST"])
    def ceiling():
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).scalar_one()
        return "ok\n"

    return app
