"""Every error answer in one place: an HTML page for pages, JSON under ``/api/``.

An error is a stable code (a domain error's ``code``, or one per HTTP status) and its status;
the words come from the message catalogue (``templates/messages.html``), in the reader's
language. JSON answers are ``{"error": code, "message": words}``.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Flask, g, get_template_attribute, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from ..db import connection_lost, get_session
from ..logs import log_event
from ..services.errors import DomainError

API_PREFIX = "/api/"

# The code of each HTTP status a request can end with.
HTTP_CODES = {
    400: "bad_request",
    401: "sign_in_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "too_many_requests",
    500: "internal_error",
    503: "database_unavailable",
}

# Seconds a client is asked to wait (Retry-After) when the database cannot be reached.
RETRY_AFTER_SECONDS = 5


def wants_json() -> bool:
    """JSON for the API, and for a client that asks for JSON rather than a page."""
    if request.path.startswith(API_PREFIX):
        return True
    best = request.accept_mimetypes.best_match(("text/html", "application/json"))
    return best == "application/json"


def message(code: str, params: dict | None = None, fallback: str = "") -> str:
    """The words for a code, from the message catalogue."""
    text = get_template_attribute("messages.html", "text")
    return str(text(code, params or {}, fallback)).strip()


def error_response(status: int, code: str, params: dict | None = None, fallback: str = ""):
    if wants_json():
        body = {"error": code, "message": message(code, params, fallback)}
        return jsonify(body), status
    return render_template("error.html", status=status, code=code, params=params or {},
                           fallback=fallback), status


def init_app(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        log_event("request.csrf_rejected", logging.WARNING, reason=exc.description)
        return error_response(400, "form_expired")

    @app.errorhandler(DomainError)
    def domain_error(exc: DomainError):
        get_session().rollback()
        return error_response(exc.status_code, exc.code, exc.params, fallback=str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        params = {"status": status}
        if status == 413:  # what was sent is never repeated: only the limit is
            params["limit_kib"] = (request.max_content_length or 0) // 1024
        response = error_response(status, HTTP_CODES.get(status, "http_error"), params)
        if status == 405 and exc.valid_methods:  # RFC 9110: a 405 names what is allowed
            body, status = response
            return body, status, {"Allow": ", ".join(exc.valid_methods)}
        return response

    @app.errorhandler(sa.exc.DBAPIError)
    def database_error(exc: sa.exc.DBAPIError):
        if not connection_lost(exc):
            return unexpected(exc)
        # Nothing half-done: the transaction is rolled back with its connection.
        log_event("request.database_unavailable", logging.WARNING,
                  error=type(exc.orig).__name__)
        _roll_back()
        g.database_unavailable = True
        body, status = error_response(503, "database_unavailable")
        return body, status, {"Retry-After": str(RETRY_AFTER_SECONDS)}

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        _roll_back()
        return error_response(500, "internal_error")


def _roll_back() -> None:
    try:
        get_session().rollback()
    except sa.exc.DBAPIError:  # the connection is gone: nothing of it is left to undo
        pass
