"""wellness-perks: creator wellness perk distribution."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app. ``test_config`` overrides settings read from the environment."""
    from config import Config

    from . import auth, cli, db, errors, logs, ops, portal, tasking
    from .extensions import csrf, login_manager

    config = Config()
    if test_config:
        for key, value in test_config.items():
            setattr(config, key, value)
    app = Flask(
        __name__,
        instance_path=config.INSTANCE_PATH,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config.from_object(config)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)

    logs.configure(app.config["LOG_LEVEL"])
    db.init_app(app)
    csrf.init_app(app)
    login_manager.init_app(app)
    tasking.celery_init_app(app)
    errors.init_app(app)
    cli.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(portal.bp)
    app.register_blueprint(ops.bp)
    return app
