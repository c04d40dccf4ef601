"""wellness-perks: creator wellness perk distribution.

``create_app`` is the one place that wires the surfaces (web, jobs, the command line) to the
core; ``main`` is the ``wellness-perks`` command.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.cli import FlaskGroup

from config import PROJECT_ROOT, Config


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app. ``test_config`` overrides settings read from the environment."""
    from . import cli, db, jobs, logs, web

    config = Config(test_config)
    app = Flask(
        __name__,
        instance_path=config.INSTANCE_PATH,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config.from_object(config)
    Path(app.instance_path).mkdir(mode=0o700, parents=True, exist_ok=True)  # keys, database, mail

    logs.configure(app.config["LOG_LEVEL"])
    db.init_app(app)
    jobs.init_app(app)
    web.init_app(app)
    cli.init_app(app)
    return app


main = FlaskGroup(
    name="wellness-perks",
    help="Run and manage wellness-perks.",
    create_app=create_app,
    add_version_option=False,
    load_dotenv=False,
    set_debug_flag=False,
)
