"""The Celery entry point, and nothing else: ``celery -A worker worker`` (and ``beat``).

It builds the Flask app, whose Celery app (with every task registered) is ``worker.app``.
Nothing in ``wellness_perks`` imports this package.
"""

from __future__ import annotations

from wellness_perks import create_app

app = create_app().extensions["celery"]
