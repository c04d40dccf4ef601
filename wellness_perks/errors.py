"""One place for error pages (and, later, JSON errors)."""

from __future__ import annotations

import logging

from flask import Flask, render_template
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from .db import get_session
from .logs import log_event
from .services.errors import DomainError

TITLES = {
    400: "Something in that request was not right",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Not now",
    500: "Something went wrong on our side",
}


def _page(status: int, message: str):
    return render_template("error.html", status=status, title=TITLES.get(status, "Error"),
                           message=message), status


def init_app(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        log_event("request.csrf_rejected", logging.WARNING, reason=exc.description)
        return _page(400, "This form has expired. Go back, reload the page and try again.")

    @app.errorhandler(DomainError)
    def domain_error(exc: DomainError):
        get_session().rollback()
        return _page(exc.status_code, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _page(exc.code or 500, exc.description or "")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        get_session().rollback()
        return _page(500, "Please try again in a minute. If it keeps happening, write to us.")
