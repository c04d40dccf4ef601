"""No code is ever stored in clear: after imports, claims, mails, a reissue and a reveal, the
raw bytes of every table (the SQLite file and its WAL, or a pg_dump of the PostgreSQL
database) hold none of the codes imported; the SQLite files are readable by their owner only."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sqlmodel import select

from harness.postgres import plain_url
from tests.helpers import csrf_token, redemption_code
from wellness_perks.db import get_session
from wellness_perks.models import Claim
from wellness_perks.services import codes

IMPORTED = [f"CLEAR-{i:04d}-SECRET{i * 7919 % 10000:04d}" for i in range(40)]
IN_BOTH = IMPORTED[:5]  # imported into a second program too


def _raw_bytes(app, backend, tmp_path) -> bytes:
    """Every byte the database holds: the SQLite files as they are on disk (a checkpoint may
    not have run: the WAL counts), or everything pg_dump writes of the PostgreSQL database."""
    url = app.config["DATABASE_URL"]
    if backend == "sqlite":
        path = Path(url.split("///", 1)[1])
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        for file in files:
            assert file.stat().st_mode & 0o777 == 0o600, f"{file} is readable by others"
        return b"".join(file.read_bytes() for file in files)
    dump = tmp_path / "dump.sql"
    subprocess.run(["pg_dump", "--no-owner", "--file", str(dump), plain_url(url)], check=True,
                   timeout=120)
    return dump.read_bytes()


def test_no_code_is_stored_in_clear_anywhere(app, backend, client, factory, signed_in,
                                             smtp_server, session, tmp_path):
    program = factory.program(slug="headspace-6m", quota=10,
                              redeem_url="https://app.example/redeem?code={code}")
    other = factory.program(slug="calm-1y", quota=10)
    creators = [f"creator{i}@example.com" for i in range(4)]
    factory.creators(program, creators)
    factory.codes(program, IMPORTED)
    factory.codes(other, IN_BOTH)

    signed_in(creators[0])  # through the portal: the page shows the owner their code
    page = client.get("/programs/headspace-6m")
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})
    assert IMPORTED[0] in client.get("/programs/headspace-6m").text
    with app.app_context():
        from wellness_perks.services import claims

        for creator_id in (2, 3, 4):
            claims.request_claim(get_session(), program=program, creator_id=creator_id)
        codes.void_code(get_session(), program_id=program.id, value=IMPORTED[1],
                        reason="partner: leaked", actor="test")
        session.rollback()
        held = session.exec(select(Claim.code_id).where(Claim.creator_id == 1)).one()
        assert codes.reveal_code(get_session(), held, actor="manager:m@example.com",
                                 reason="support ticket 12") == IMPORTED[0]
    mailed = {redemption_code(m) for m in smtp_server.messages if "code" in m["Subject"]}
    assert mailed == {IMPORTED[0], IMPORTED[1], IMPORTED[2], IMPORTED[3], IMPORTED[4]}

    raw = _raw_bytes(app, backend, tmp_path)
    assert creators[0].encode() in raw  # the search does read the tables' data
    found = [code for code in IMPORTED if code.encode() in raw
             or code.encode("utf-16-le") in raw or code.lower().encode() in raw]
    assert found == []
