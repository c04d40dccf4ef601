"""Abuse limits, answered with 429 and a Retry-After before any work is done (Flask-Limiter).

Each limit is a setting (``RATELIMIT_*``, e.g. ``3 per 15 minutes``) and counts one thing:

- ``sign_in_per_address``: sign-in links asked for one (normalised) address, whether or not it
  is on a list, which also caps the sign-in mails anyone can make us send to a person;
- ``sign_in_per_ip``: sign-in requests from one client address;
- ``claim_per_session``: claim POSTs of one signed-in session;
- ``manager_password_failures``: failed passwords for one manager address; at the limit the
  address is locked out until the window passes, or until an admin sets the manager a new
  password (``password_locked_out``, ``record_password_failure``, ``clear_password_failures``,
  ``forget_password_failures``);
- ``api_token``: requests made with one API token (``per_api_token``).

Counters live in Redis when a broker is configured (``RATELIMIT_STORAGE_URI``, by default the
Celery broker's Redis), so every process shares them; in memory otherwise (the embedded
default). A counter store that does not answer lets requests through (and says so in the log):
the limits guard against abuse, they must not take the portal down with Redis.
``RATELIMIT_ENABLED=false`` switches every limit off (load tests).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from functools import wraps

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_login import current_user
from limits import RateLimitItem, parse
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

from ..logs import log_event
from .errors import error_response

# Each limit's name, the setting that holds it, and the stable code of its 429.
LIMITS = {
    "sign_in_per_address": ("RATELIMIT_SIGN_IN_PER_ADDRESS", "too_many_sign_ins"),
    "sign_in_per_ip": ("RATELIMIT_SIGN_IN_PER_IP", "too_many_sign_ins"),
    "claim_per_session": ("RATELIMIT_CLAIM_PER_SESSION", "too_many_claims"),
    "manager_password_failures": ("RATELIMIT_MANAGER_PASSWORD_FAILURES", "password_locked_out"),
    "api_token": ("RATELIMIT_API_TOKEN", "too_many_api_requests"),
}
KEY_PREFIX = "wellness-perks:limits"


def client_address() -> str:
    """The client's address (as the last trusted proxy saw it, with TRUSTED_PROXY_COUNT)."""
    return request.remote_addr or "unknown"


class LimitReached(TooManyRequests):
    """A limit counted by hand (its key is not the request's) was reached."""

    def __init__(self, code: str, retry_after: int) -> None:
        super().__init__()
        self.error_code = code
        self.retry_after = retry_after


def init_app(app: Flask) -> None:
    config = app.config
    for name, (setting, _code) in LIMITS.items():
        try:
            parse(config[setting])
        except ValueError as exc:
            raise RuntimeError(f"environment variable {setting} must be a limit such as "
                               f"'3 per 15 minutes', got {config[setting]!r} ({name})") from exc
    if config["TRUSTED_PROXY_COUNT"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config["TRUSTED_PROXY_COUNT"])
    config.setdefault("RATELIMIT_KEY_PREFIX", KEY_PREFIX)
    config.setdefault("RATELIMIT_STORAGE_OPTIONS",
                      {"socket_timeout": 2, "socket_connect_timeout": 2}
                      if config["RATELIMIT_STORAGE_URI"].startswith(("redis://", "rediss://"))
                      else {})
    # One limiter per app: its store and settings are the app's (a test's apps never share).
    # It brings the store (Redis or memory, from RATELIMIT_STORAGE_URI) and the strategy; the
    # limits below are counted with keys of their own (an address, a session, a token).
    limiter = Limiter(key_func=client_address, app=app,
                      key_prefix=config["RATELIMIT_KEY_PREFIX"])
    _without_route_checks(app, limiter)
    app.extensions["limiter"] = limiter
    app.extensions["limit_items"] = {name: parse(config[setting])
                                     for name, (setting, _code) in LIMITS.items()}
    app.register_error_handler(LimitReached, _limit_reached)
    # For ``managers.set_password`` (a service, which imports no surface), as ``dispatch``
    # finds the tasks: a new password set by an admin ends the address's lockout.
    app.extensions["forget_password_failures"] = forget_password_failures


def _without_route_checks(app: Flask, limiter: Limiter) -> None:
    """No route carries a Flask-Limiter decorator limit (each limit here is counted by hand,
    keyed by what it limits), so Flask-Limiter's check of every request against its route
    limits, and the headers it would add, are work for nothing on every request, the
    launch-day claim included: both hooks are taken off again."""
    checks = app.before_request_funcs.get(None, [])
    if limiter._check_request_limit in checks:
        checks.remove(limiter._check_request_limit)
    responses = app.after_request_funcs.get(None, [])
    responses[:] = [hook for hook in responses
                    if getattr(hook, "args", None) != (limiter,)]


def _limit_reached(exc: LimitReached):
    retry_after = max(1, exc.retry_after)
    body, status = error_response(429, exc.error_code, {"minutes": -(-retry_after // 60)})
    return body, status, {"Retry-After": str(retry_after)}


def _strategy():
    """The app's rate limiting strategy (``limits``) over its store."""
    return current_app.extensions["limiter"].limiter


def _item(name: str) -> RateLimitItem:
    return current_app.extensions["limit_items"][name]


def _on() -> bool:
    return bool(current_app.config["RATELIMIT_ENABLED"])


def _retry_after(item: RateLimitItem, *ids: str) -> int:
    reset_at = _strategy().get_window_stats(item, *ids).reset_time
    return int(reset_at - time.time())


def _ids(name: str, key: str) -> tuple[str, str, str]:
    """What a counter is keyed by: RATELIMIT_KEY_PREFIX, the limit, and a hash of the key, so
    no address or token sits in Redis in clear."""
    return (current_app.config["RATELIMIT_KEY_PREFIX"], name,
            hashlib.sha256(key.encode()).hexdigest()[:32])


def _store_failed(exc: Exception, name: str) -> None:
    log_event("limits.store_unavailable", logging.WARNING, limit=name,
              error=type(exc).__name__)


def hit(name: str, key: str) -> None:
    """Count one more of ``name`` for ``key``; LimitReached (429) once over the limit."""
    if not _on():
        return
    item, ids = _item(name), _ids(name, key)
    try:
        if _strategy().hit(item, *ids):
            return
        retry_after = _retry_after(item, *ids)
    except Exception as exc:  # noqa: BLE001 - the store is down: let the request through
        _store_failed(exc, name)
        return
    log_event("limits.reached", limit=name)
    raise LimitReached(LIMITS[name][1], retry_after)


# --------------------------------------------------------------------------- route limits


def limited(name: str, key: Callable[[], str]):
    """A view decorator: each POST counts one of ``name`` for ``key()``."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            if request.method == "POST":
                hit(name, key())
            return view(*args, **kwargs)

        return wrapper

    return decorator


def _session_key() -> str:
    if current_user.is_authenticated:
        return "session:" + current_user.get_id()
    return "address:" + client_address()


# Sign-in requests from one client address (POST /login).
sign_in_per_ip = limited("sign_in_per_ip", client_address)
# Claim POSTs of one signed-in session.
claim_per_session = limited("claim_per_session", _session_key)


def sign_in_per_address(address: str) -> None:
    """Count a sign-in link asked for this normalised address (on a list or not)."""
    hit("sign_in_per_address", address)


# --------------------------------------------------------------------------- console hooks


def password_locked_out(email: str) -> None:
    """LimitReached (429) while this manager address has failed its password too often."""
    if not _on():
        return
    name = "manager_password_failures"
    item, ids = _item(name), _ids(name, email)
    try:
        if _strategy().test(item, *ids):
            return
        retry_after = _retry_after(item, *ids)
    except Exception as exc:  # noqa: BLE001 - the store is down: the password check still runs
        _store_failed(exc, name)
        return
    raise LimitReached(LIMITS[name][1], retry_after)


def record_password_failure(email: str) -> None:
    """Count a failed password for this manager address; the one that reaches the limit
    starts the lockout."""
    if not _on():
        return
    name = "manager_password_failures"
    try:
        _strategy().hit(_item(name), *_ids(name, email))
    except Exception as exc:  # noqa: BLE001
        _store_failed(exc, name)


def forget_password_failures(email: str) -> int:
    """An admin set the manager a new password: the failures counted for the address, and the
    lockout they started, are forgotten. How many were counted (at most the limit's; 0 with
    the limits off, or when the store does not answer: that is logged)."""
    if not _on():
        return 0
    name = "manager_password_failures"
    item, ids = _item(name), _ids(name, email)
    try:
        failures = item.amount - _strategy().get_window_stats(item, *ids).remaining
        if failures:
            _strategy().clear(item, *ids)
    except Exception as exc:  # noqa: BLE001
        _store_failed(exc, name)
        return 0
    return failures


def clear_password_failures(email: str) -> None:
    """A correct password: the failures counted so far are forgotten."""
    if not _on():
        return
    name = "manager_password_failures"
    try:
        _strategy().clear(_item(name), *_ids(name, email))
    except Exception as exc:  # noqa: BLE001
        _store_failed(exc, name)


def api_token_of_request() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def per_api_token(view):
    """Limit a view to RATELIMIT_API_TOKEN requests per bearer token (JSON 429 under /api/)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        token = api_token_of_request()
        if token is not None:
            hit("api_token", token)
        return view(*args, **kwargs)

    return wrapper
