"""Control characters and oversized bodies never get past the door.

A body larger than MAX_CONTENT_LENGTH is too large (413) by its announced length, before anything
reads it; one that does not announce its length is cut off at the limit as it is read (Werkzeug).
A view marked ``accepts_uploads`` (the console's uploads) takes up to MAX_UPLOAD_BYTES instead,
from a manager's session only: anyone else is held to MAX_CONTENT_LENGTH.

No URL we serve has a control character in it, so a path with one is not found (404) before any
view or database sees it (PostgreSQL refuses a NUL in a string with an error). A query or form
value with one is a bad request (400); tab and line breaks are allowed in form values only.
Uploaded files are the importers' to check, line by line.
"""

from __future__ import annotations

import re

from flask import Flask, abort, current_app, request, session

from .security import ManagerUser

_IN_PATH = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_IN_VALUE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def accepts_uploads(view):
    """Mark a view (the one its route registers) as taking files up to MAX_UPLOAD_BYTES."""
    view.accepts_uploads = True
    return view


def _manager_session() -> bool:
    """Whether the signed session names a manager (read from the cookie, no query: whether
    they may upload is the view's to check)."""
    return str(session.get("_user_id", "")).startswith(f"{ManagerUser.prefix}:")


def refuse_oversized_bodies() -> None:
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "accepts_uploads", False) and _manager_session():
        request.max_content_length = current_app.config["MAX_UPLOAD_BYTES"]
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        abort(413)


def refuse_control_characters() -> None:
    if _IN_PATH.search(request.path):
        abort(404)
    values = [request.args]
    if request.method in ("POST", "PUT", "PATCH") and request.mimetype in (
            "application/x-www-form-urlencoded", "multipart/form-data"):
        values.append(request.form)
    for multidict in values:
        for key, value in multidict.items(multi=True):
            if _IN_PATH.search(key) or _IN_VALUE.search(value):
                abort(400)


def init_app(app: Flask) -> None:
    app.before_request(refuse_oversized_bodies)
    app.before_request(refuse_control_characters)
