"""Structured log lines: one event per line, ``event=... key=value ...``.

Only ids, counts and states go in here: never a code, a sign-in token or a mail body.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("wellness_perks")


def _fmt(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in " \"=\n"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    parts = [f"event={event}"] + [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    logger.log(level, " ".join(parts))


def configure(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("wellness_perks").setLevel(level.upper())
    # SQL parameters carry codes: the engine's own logging stays off whatever the level.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
