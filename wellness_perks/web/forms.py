"""The base of every form: fields are read from the posted form fields only.

Flask-WTF's own forms also take a field from a file upload of the same name, or from a JSON
body, so a value that is not text (a file, a number, a list) reaches validators written for
text and ends in a 500. Here a field sent any other way than as a form field is simply absent:
the form answers as for a missing value (400 with the field's message).
"""

from __future__ import annotations

from flask import request
from flask_wtf import FlaskForm


class Form(FlaskForm):
    def __init__(self, **kwargs) -> None:
        super().__init__(formdata=request.form if self.is_submitted() else None, **kwargs)
