"""Rendering a mail (``mail/render.py``): creator data in the HTML body is escaped."""

from __future__ import annotations

import io

from tests.helpers import html_body
from wellness_perks.db import get_session
from wellness_perks.services import auth, imports


def test_html_mail_escapes_creator_data(app, factory, smtp_server):
    program = factory.program()
    with app.app_context():
        imports.import_creators(
            get_session(), program=program, actor="test",
            stream=io.BytesIO(b"handle,email,country\n<b>x</b>,x@example.com,PK\n"))
    factory.codes(program, ["HS-AAAA-0001"])
    with app.app_context():
        auth.request_sign_in(get_session(), email="x@example.com")
    smtp_server.wait_for_mail("x@example.com", "sign-in")
    [message] = smtp_server.to("x@example.com")
    html = html_body(message)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
