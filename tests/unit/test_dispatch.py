"""Publishing work: every kind of task the web side hands out is published by name through the
app's Celery registry, and the web process never loads the worker's entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from wellness_perks import dispatch

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter, so that sys.modules shows only what building the app and
# enqueueing loaded.
SCRIPT = textwrap.dedent("""
    import json, sys
    from wellness_perks import create_app, dispatch
    from wellness_perks.migrate import upgrade

    url = "sqlite:///" + sys.argv[1] + "/perks.db"
    upgrade(url)
    settings = {"DATABASE_URL": url, "INSTANCE_PATH": sys.argv[1],
                "SECRET_KEY": "test-secret-key-of-at-least-32-bytes",
                "OUTBOX_DIR": sys.argv[1] + "/outbox"}
    published = {}
    for broker in ("", "memory://"):  # in-process (eager), then a broker
        app = create_app(settings | {"CELERY_BROKER_URL": broker})
        with app.app_context():
            dispatch.schedule_allocation(1)
            dispatch.allocate_program(1)
            dispatch.send_email(1)
            dispatch.send_emails([1, 2])
            dispatch.request_sign_in("ayesha@example.com")
            if broker:
                celery = app.extensions["celery"]
                with celery.connection_for_read() as connection:
                    channel = connection.channel()
                    for queue in ("allocation", "mail"):
                        published[queue] = channel.queue_declare(
                            queue=queue, passive=True).message_count
        app.extensions["db_engine"].dispose()
    loaded = sorted(m for m in sys.modules if m == "worker" or m.startswith("worker."))
    print(json.dumps({"published": published, "worker_modules": loaded}))
""")


def test_each_task_kind_is_published_without_loading_the_worker(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["worker_modules"] == []
    # Two allocation tasks (the coalesced trigger and a direct one), three mail tasks (a
    # sign-in request is decided on the mail queue).
    assert outcome["published"] == {"allocation": 2, "mail": 3}


def test_every_task_is_named_once_and_registered(app):
    names = {dispatch.ALLOCATE_PROGRAM, dispatch.SEND_EMAIL, dispatch.SEND_EMAILS, dispatch.SWEEP,
             dispatch.REQUEST_SIGN_IN, dispatch.IMPORT_UPLOAD, dispatch.SEND_INVITATIONS}
    registered = {name for name in app.extensions["celery"].tasks
                  if name.startswith("wellness_perks.")}
    assert registered == names
