"""Rendering a mail (``mail/render.py``): creator data in the HTML body is escaped; a mail is
rendered in the language its row records."""

from __future__ import annotations

import io

import sqlalchemy as sa

from tests.helpers import html_body, text_body
from wellness_perks.db import get_session
from wellness_perks.models import Creator
from wellness_perks.services import auth, claims, imports


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


def test_the_code_mail_names_the_programs_support_contact(app, factory, smtp_server):

    own = factory.program(support_email="help@headspace.example")
    plain = factory.program(slug="calm-1y")
    factory.creators(own, ["ayesha@example.com"])
    factory.creators(plain, ["bilal@example.com"])
    factory.codes(own, ["HS-AAAA-0001"])
    factory.codes(plain, ["CALM-AAAA-0001"])
    with app.app_context():
        claims.request_claim(get_session(), program=own.slug, creator_id=1)
        claims.request_claim(get_session(), program=plain.slug, creator_id=2)
    [own_mail] = smtp_server.wait_for_mail("ayesha@example.com", "code")
    [plain_mail] = smtp_server.wait_for_mail("bilal@example.com", "code")
    assert "Write to help@headspace.example." in text_body(own_mail)
    assert 'href="mailto:help@headspace.example"' in html_body(own_mail)
    help_email = app.config["HELP_EMAIL"]
    assert f"Write to {help_email}." in text_body(plain_mail)  # none set: the platform's
    assert "help@headspace.example" not in str(own_mail["Subject"]) + str(own_mail["From"])
