"""The reader's language: which locale a page is rendered in, and its writing direction.

A signed-in creator reads in their own ``locale``; anyone else gets the best match of their
browser's languages among ``SUPPORTED_LOCALES``. Templates get ``lang`` and ``text_dir``.
Mail is rendered in the language its row records (``services/mail/render.py``).
"""

from __future__ import annotations

from flask import Flask, g, request
from flask_login import current_user

from ..models import DEFAULT_LOCALE, SUPPORTED_LOCALES, text_direction


def get_locale() -> str:
    # With the database unreachable, the creator's own language cannot be read: the browser's.
    if getattr(current_user, "is_authenticated", False) and not g.get("database_unavailable"):
        locale = getattr(current_user, "locale", None)
        if locale in SUPPORTED_LOCALES:
            return locale
    return request.accept_languages.best_match(SUPPORTED_LOCALES) or DEFAULT_LOCALE


def init_app(app: Flask) -> None:
    @app.context_processor
    def language():
        locale = get_locale()
        return {"lang": locale, "text_dir": text_direction(locale)}
