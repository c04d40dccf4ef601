"""The JSON API for scripts (``/api/v1``): every request carries an API token
(``Authorization: Bearer wpt_…``, made by an admin in the console or with
``create-api-token``), and every endpoint says the least role it needs
(``token_role_required``). Answers and errors are JSON (``web/errors.py``); no cookie
authenticates here, so no CSRF token is asked for (the blueprint is registered exempt)."""

from .views import bp

__all__ = ["bp"]
