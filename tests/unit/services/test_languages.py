"""Every mail owed records the language of its creator, and is rendered in the language its
row records (the page's ``lang`` and writing direction with it)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import html_body
from wellness_perks.db import get_session
from wellness_perks.models import Creator, MailKind, OutboundEmail
from wellness_perks.services import auth, claims, codes


def _speaks(session, email: str, locale: str) -> None:
    session.execute(sa.update(Creator).where(Creator.email == email).values(locale=locale))
    session.commit()


def test_each_kind_of_mail_records_its_creators_language(app, factory, session, smtp_server):
    program = factory.program(quota=5)
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    factory.codes(program, ["HS-CODE-0001", "HS-CODE-0002", "HS-CODE-0003"])
    _speaks(session, "ayesha@example.com", "ur")
    with app.app_context():
        auth.request_sign_in(get_session(), email="ayesha@example.com")
        auth.request_sign_in(get_session(), email="bilal@example.com")
        for creator_id in (1, 2):
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
        codes.reissue_claim(get_session(), program_id=program.id,
                            creator_email="ayesha@example.com", reason="test", actor="test")
    session.rollback()
    recorded = session.exec(select(OutboundEmail.to_email, OutboundEmail.kind,
                                   OutboundEmail.locale).order_by(OutboundEmail.id)).all()
    assert sorted(recorded) == sorted([
        ("ayesha@example.com", MailKind.sign_in, "ur"),
        ("bilal@example.com", MailKind.sign_in, "en"),
        ("ayesha@example.com", MailKind.redemption, "ur"),
        ("bilal@example.com", MailKind.redemption, "en"),
        ("ayesha@example.com", MailKind.reissue, "ur")])


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
