"""Codes are money: no code value and no sign-in token appears in any log line."""

from __future__ import annotations

import logging

from tests.helpers import csrf_token, redemption_code, sign_in_link


def test_no_code_or_token_in_any_log_record(app, client, factory, smtp_server, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level, SQLAlchemy's included
    program = factory.program(quota=1)
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    codes = ["HS-SECRET-0001", "HS-SECRET-0002"]
    factory.codes(program, codes)

    page = client.get("/login")
    client.post("/login", data={"email": "ayesha@example.com",
                                "csrf_token": csrf_token(page.text)})
    link = sign_in_link(smtp_server.wait_for_mail("ayesha@example.com", "sign-in")[0])
    token = link.rsplit("/", 1)[1]
    client.get(link.removeprefix("http://localhost"))
    page = client.get("/programs/headspace-6m")
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})
    assert redemption_code(smtp_server.wait_for_mail("ayesha@example.com", "code")[0]) in codes
    # A failing send logs too.
    smtp_server.refuse_with = "451 later"
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/").text)})

    # Everything but aiosmtpd ("mail.log"): it is the receiving mail server, not us.
    lines = [record.getMessage() for record in caplog.records
             if not record.name.startswith("mail.log")]
    assert any("allocation.batch" in line for line in lines)  # we did capture the app's logging
    for line in lines:
        for secret in (*codes, token):
            assert secret not in line, f"secret in log line: {line}"
