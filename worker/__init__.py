"""The Celery worker entry point: ``celery -A worker worker`` (and ``celery -A worker beat``).

The Celery app is built from ``create_app()`` on first use, so importing ``worker.tasks`` from
the web app (to enqueue) has no side effects.
"""

from __future__ import annotations

_celery_app = None


def __getattr__(name: str):
    global _celery_app
    if name in {"app", "celery"}:
        if _celery_app is None:
            from wellness_perks import create_app

            _celery_app = create_app().extensions["celery"]
        return _celery_app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
