from __future__ import annotations

from ..forms import Form


class ClaimForm(Form):
    """No fields: the button and its CSRF token."""


class DeletionForm(Form):
    """No fields: the button and its CSRF token."""
