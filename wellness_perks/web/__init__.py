"""Everything HTTP: the blueprints of each surface, who may reach them, errors and language.

Views are thin: they read the request, call one service and answer (a page, a redirect, or
JSON). Rules live in ``services``; words live in ``templates``.
"""

from __future__ import annotations

from flask import Blueprint, Flask

from . import api, auth, console, errors, headers, hygiene, i18n, limits, ops, portal, security
from .security import csrf, login_manager

# Each surface, and whether its POSTs carry a CSRF token (form posts from our own pages do).
SURFACES: tuple[tuple[Blueprint, bool], ...] = (
    (auth.bp, True),
    (portal.bp, True),
    (console.bp, True),
    (ops.bp, True),
    (api.bp, False),  # bearer tokens only: no cookie is an API credential
)


def register(app: Flask, blueprint: Blueprint, *, csrf_protected: bool = True) -> None:
    """Register a surface. One whose requests authenticate otherwise than by the session
    cookie (API tokens) is exempted from CSRF: there is no ambient credential to forge."""
    if not csrf_protected:
        csrf.exempt(blueprint)
    app.register_blueprint(blueprint)


def init_app(app: Flask) -> None:
    hygiene.init_app(app)  # first: nothing else reads a request with a control character
    headers.init_app(app)
    csrf.init_app(app)
    login_manager.init_app(app)
    app.before_request(security.end_expired_session)
    errors.init_app(app)
    limits.init_app(app)
    i18n.init_app(app)
    for blueprint, csrf_protected in SURFACES:
        register(app, blueprint, csrf_protected=csrf_protected)
