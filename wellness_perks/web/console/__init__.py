"""The manager console (``/manage``): program managers run the campaign from a browser.

Managers sign in with an email and a password (``login``), never with a creator's mailed link;
every route says the least role it needs (``role_required``: viewer < manager < admin).
"""

from .views import bp

__all__ = ["bp"]
