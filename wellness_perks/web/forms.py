"""The base of every form: fields are read from the posted form fields only.

Flask-WTF's own forms also take a field from a file upload of the same name, or from a JSON
body, so a value that is not text (a file, a number, a list) reaches validators written for
text and ends in a 500. Here a field is read from the form fields only, and a field sent as a
file upload makes the form invalid (400 with the field's message ``field_not_text``), whether
or not the field is required: a request of the wrong shape changes nothing.

A form with file fields (``UploadForm``) names them in ``file_fields``: those, and only those,
are read from the uploaded files (a file field sent as text is no file).
"""

from __future__ import annotations

from flask import request
from flask_wtf import FlaskForm
from werkzeug.datastructures import MultiDict


class Form(FlaskForm):
    file_fields: tuple[str, ...] = ()

    def __init__(self, **kwargs) -> None:
        super().__init__(formdata=self._posted() if self.is_submitted() else None, **kwargs)

    def _posted(self):
        if not self.file_fields:
            return request.form
        posted = MultiDict(request.form)
        for name in self.file_fields:
            posted.setlist(name, request.files.getlist(name))
        return posted

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        for name, field in self._fields.items():
            if name in request.files and name not in self.file_fields:
                field.errors = [*field.errors, "field_not_text"]
                valid = False
        return valid
