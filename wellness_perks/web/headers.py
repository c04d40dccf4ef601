"""Security headers on every answer (pages, errors, JSON, static files), by Flask-Talisman.

- Content-Security-Policy: scripts, styles, images and fonts from our own origin only, never
  inline (the pages have no inline script, style or event handler: static/ holds them); no
  plugins; forms post only to us; no page of ours in anyone's frame (``frame-ancestors 'none'``,
  and ``X-Frame-Options: DENY`` for browsers that predate it).
- ``Referrer-Policy: no-referrer``: a sign-in link carries its token in the path, and no page
  tells another site where the reader came from.
- ``X-Content-Type-Options: nosniff``.
- HSTS only when BASE_URL is https: a browser told to insist on https for a host served over
  http (``make run``, the tests) could not reach it again. Redirecting http to https is the TLS
  front's job, not the app's: the app may sit behind a proxy that speaks http to it.
"""

from __future__ import annotations

from flask import Flask
from flask_talisman import Talisman

CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}

# A year, as browsers' preload lists ask. HSTS is sent on answers to https requests (or ones a
# TLS front marked X-Forwarded-Proto: https).
HSTS_MAX_AGE_SECONDS = 365 * 24 * 3600



def init_app(app: Flask) -> None:
    """One Talisman per app: it keeps its settings on itself."""
    https = app.config["BASE_URL"].startswith("https://")
    app.extensions["talisman"] = Talisman(
        app,
        force_https=False,
        content_security_policy=CONTENT_SECURITY_POLICY,
        frame_options="DENY",
        referrer_policy="no-referrer",
        x_content_type_options=True,
        strict_transport_security=https,
        strict_transport_security_max_age=HSTS_MAX_AGE_SECONDS,
        strict_transport_security_include_subdomains=False,
        # The session cookie's flags are config.py's (SESSION_COOKIE_*), not Talisman's.
        session_cookie_secure=app.config["SESSION_COOKIE_SECURE"],
        session_cookie_http_only=app.config["SESSION_COOKIE_HTTPONLY"],
        session_cookie_samesite=app.config["SESSION_COOKIE_SAMESITE"],
    )
