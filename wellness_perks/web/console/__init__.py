"""The manager console (``/manage``): program managers run the campaign from a browser.

Managers sign in with an email and a password (``login``), never with a creator's mailed link,
then with a second factor where they have one (an admin must: ``two_factor``); every route
says the least role it needs (``role_required``: viewer < manager < admin).
"""

from . import api_tokens, managers, support  # noqa: F401 - their routes join the blueprint
from .views import bp

__all__ = ["bp"]
