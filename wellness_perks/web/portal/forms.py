from __future__ import annotations

from flask_wtf import FlaskForm


class ClaimForm(FlaskForm):
    """No fields: the button and its CSRF token."""


class DeletionForm(FlaskForm):
    """No fields: the button and its CSRF token."""
