"""Rendering a mail (``mail/render.py``): creator data in the HTML body is escaped; a mail is
rendered in the language its row records."""

from __future__ import annotations

import io

import sqlalchemy as sa

from tests.helpers import html_body
from wellness_perks.db import get_session
from wellness_perks.models import Creator
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


def _speaks(session, email: str, locale: str) -> None:
    session.execute(sa.update(Creator).where(Creator.email == email).values(locale=locale))
    session.commit()


def test_a_mail_is_rendered_in_the_language_its_row_records(app, factory, session, smtp_server):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    _speaks(session, "ayesha@example.com", "ur")
    with app.app_context():
        auth.request_sign_in(get_session(), email="ayesha@example.com")
        auth.request_sign_in(get_session(), email="bilal@example.com")
    [urdu] = smtp_server.wait_for_mail("ayesha@example.com", "sign-in")
    [english] = smtp_server.wait_for_mail("bilal@example.com", "sign-in")
    assert '<html lang="ur" dir="rtl">' in html_body(urdu)
    assert '<html lang="en" dir="ltr">' in html_body(english)
