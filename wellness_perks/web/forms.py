"""The base of every form: fields are read from the posted form fields only.

Flask-WTF's own forms also take a field from a file upload of the same name, or from a JSON
body, so a value that is not text (a file, a number, a list) reaches validators written for
text and ends in a 500. Here a field is read from the form fields only, and a field sent as a
file upload makes the form invalid (400 with the field's message ``field_not_text``), whether
or not the field is required: a request of the wrong shape changes nothing.
"""

from __future__ import annotations

from flask import request
from flask_wtf import FlaskForm


class Form(FlaskForm):
    def __init__(self, **kwargs) -> None:
        super().__init__(formdata=request.form if self.is_submitted() else None, **kwargs)

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        for name, field in self._fields.items():
            if name in request.files:
                field.errors = [*field.errors, "field_not_text"]
                valid = False
        return valid
