"""The Alembic history builds the schema the models describe, and runs down and up again."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import wellness_perks.models  # noqa: F401  (the tables)
from tests.helpers import (
    CODE_ENCRYPTION_KEY,
    code_fingerprint,
    code_value,
    create_pg_database,
    drop_pg_database,
    postgres_available,
    service_missing,
)
from wellness_perks.db import make_engine
from wellness_perks.migrate import alembic_config

CODE_KEYS = {"CODE_ENCRYPTION_KEY": CODE_ENCRYPTION_KEY, "CODE_FINGERPRINT_KEY": ""}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    why = postgres_available()
    if why:
        service_missing("PostgreSQL", why)
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def _differences(url):
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    return diff


def _normal(sql: str) -> str:
    """A CHECK's condition as text, without the spacing and parentheses databases add."""
    return "".join(ch for ch in str(sql).lower() if ch not in " ()\n\t")


def _checks_in_database(url) -> dict[tuple[str, str], str]:
    """Every CHECK constraint of the database's tables (which alembic's comparison of the
    schema with the models leaves out)."""
    engine = make_engine(url)
    inspector = sa.inspect(engine)
    found = {(table.name, check["name"]): _normal(check["sqltext"])
             for table in SQLModel.metadata.sorted_tables
             for check in inspector.get_check_constraints(table.name)}
    engine.dispose()
    return found


MODEL_CHECKS = {(table.name, constraint.name): _normal(constraint.sqltext)
                for table in SQLModel.metadata.sorted_tables
                for constraint in table.constraints
                if isinstance(constraint, sa.CheckConstraint)}


def _checks_the_models_make(url) -> dict[tuple[str, str], str]:
    """The CHECK constraints as this database renders the models' own (``create_all`` into
    ``url``): PostgreSQL writes a condition back its own way (``IN`` as ``= ANY (ARRAY[…])``)."""
    engine = make_engine(url)
    SQLModel.metadata.create_all(engine)
    engine.dispose()
    return _checks_in_database(url)


@pytest.fixture
def models_database(empty_database, tmp_path):
    if empty_database.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'models.db'}"
        return
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def test_upgrade_matches_models_and_round_trips(empty_database, models_database):
    expected_checks = _checks_the_models_make(models_database)
    assert set(expected_checks) == set(MODEL_CHECKS)
    config = alembic_config(empty_database, CODE_KEYS)
    command.upgrade(config, "head")
    assert _differences(empty_database) == []
    assert _checks_in_database(empty_database) == expected_checks
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    assert _differences(empty_database) == []
    assert _checks_in_database(empty_database) == expected_checks


def test_the_models_declare_the_checks_the_invariants_rest_on():
    assert set(MODEL_CHECKS) == {
        ("program", "ck_program_quota_room"), ("program", "ck_program_quota_positive"),
        ("program", "ck_program_stock_positive"), ("countryquota", "ck_country_quota_room"),
        ("countryquota", "ck_country_quota_positive"), ("manager", "ck_manager_role"),
        ("codebatch", "ck_codebatch_stock_positive"),
        ("stagedupload", "ck_stagedupload_kind"), ("importjob", "ck_importjob_kind"),
        ("importjob", "ck_importjob_state"),
        ("invitation", "ck_invitation_reminder_mail"),
        ("apitoken", "ck_apitoken_role"), ("apitoken", "ck_apitoken_revoked_by")}


def test_upgrade_to_0012_counts_each_batchs_codes_in_stock(empty_database):
    config = alembic_config(empty_database, CODE_KEYS)
    command.upgrade(config, "0009")
    engine = make_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
            "in_stock_count, code_pattern, created_at) "
            "VALUES (1, 'p', 'P', 6, 10, 0, 3, '.*', CURRENT_TIMESTAMP)"))
        for batch_id, statuses in ((1, ["available", "assigned", "available", "void"]),
                                   (2, ["available"]), (3, ["assigned"])):
            conn.execute(sa.text(
                "INSERT INTO codebatch (id, program_id, name, code_count, created_at) "
                "VALUES (:id, 1, 'b', 0, CURRENT_TIMESTAMP)"), {"id": batch_id})
            for i, status in enumerate(statuses):
                conn.execute(sa.text(
                    "INSERT INTO code (program_id, batch_id, value_encrypted, key_id, "
                    "fingerprint, status) VALUES (1, :b, :token, 'k', :fingerprint, :status)"),
                    {"b": batch_id, "token": b"t", "fingerprint": f"F-{batch_id}-{i}".encode(),
                     "status": status})
    for _ in range(2):  # and down and up again
        command.upgrade(config, "0012")
        with engine.connect() as conn:
            counters = conn.execute(sa.text("SELECT id, in_stock_count FROM codebatch "
                                            "ORDER BY id"))
            assert counters.all() == [(1, 2), (2, 1), (3, 0)]
        command.downgrade(config, "0009")
    engine.dispose()


def test_upgrade_to_0003_counts_each_programs_codes_in_stock(empty_database):
    config = alembic_config(empty_database, CODE_KEYS)
    command.upgrade(config, "0002")
    engine = make_engine(empty_database)
    with engine.begin() as conn:
        for program_id, statuses in ((1, ["available", "assigned", "available", "void"]),
                                     (2, ["assigned"]), (3, [])):
            conn.execute(sa.text(
                "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
                "code_pattern, created_at) VALUES (:id, :slug, 'P', 6, 10, 0, '.*', "
                "CURRENT_TIMESTAMP)"), {"id": program_id, "slug": f"p{program_id}"})
            conn.execute(sa.text(
                "INSERT INTO codebatch (id, program_id, name, code_count, created_at) "
                "VALUES (:id, :id, 'b', 0, CURRENT_TIMESTAMP)"), {"id": program_id})
            for i, status in enumerate(statuses):
                conn.execute(sa.text(
                    "INSERT INTO code (program_id, batch_id, value, status) "
                    "VALUES (:p, :p, :value, :status)"),
                    {"p": program_id, "value": f"C-{i}", "status": status})
    for _ in range(2):  # and down and up again, with the rows that reference the programs
        command.upgrade(config, "0003")
        with engine.connect() as conn:
            counters = conn.execute(sa.text("SELECT id, in_stock_count FROM program "
                                            "ORDER BY id"))
            assert counters.all() == [(1, 2), (2, 0), (3, 0)]
        command.downgrade(config, "0002")
    engine.dispose()


def test_upgrade_from_0001_keeps_a_programs_rows(empty_database):
    """A database made by the first release, with a claim served and mailed, upgrades to head
    with every row kept. On SQLite the batch migrations rebuild ``program``, ``claim`` and
    ``outboundemail`` (copy, drop, rename), which rows of other tables refer to."""
    config = alembic_config(empty_database, CODE_KEYS)
    command.upgrade(config, "0001")
    engine = make_engine(empty_database)
    now = "CURRENT_TIMESTAMP"
    with engine.begin() as conn:
        for statement in (
            "INSERT INTO creator (id, email, handle, country, login_nonce, created_at) "
            f"VALUES (1, 'a@example.com', 'a', 'PK', 0, {now}), "
            f"(2, 'b@example.com', 'b', 'GB', 0, {now})",
            "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
            f"code_pattern, created_at) VALUES (1, 'p1', 'P', 6, 10, 1, '.*', {now})",
            f"INSERT INTO eligibility (program_id, creator_id, created_at) VALUES (1, 1, {now}), "
            f"(1, 2, {now})",
            f"INSERT INTO codebatch (id, program_id, name, code_count, created_at) "
            f"VALUES (1, 1, 'b', 2, {now})",
            f"INSERT INTO code (id, program_id, batch_id, value, status, assigned_at) "
            f"VALUES (1, 1, 1, 'C-1', 'assigned', {now}), (2, 1, 1, 'C-2', 'available', NULL)",
            "INSERT INTO claim (id, program_id, creator_id, state, code_id, requested_at, "
            f"decided_at) VALUES (1, 1, 1, 'allocated', 1, {now}, {now}), "
            f"(2, 1, 2, 'pending', NULL, {now}, NULL)",
            "INSERT INTO outboundemail (kind, to_email, creator_id, claim_id, status, attempts, "
            f"created_at) VALUES ('redemption', 'a@example.com', 1, 1, 'sent', 1, {now})",
            "INSERT INTO auditevent (at, actor, action, object_type, object_id, program_id) "
            f"VALUES ({now}, 'system', 'claim.allocated', 'claim', 1, 1)",
        ):
            conn.execute(sa.text(statement))
    command.upgrade(config, "head")
    with engine.connect() as conn:
        def rows(sql):
            return [tuple(row) for row in conn.execute(sa.text(sql))]

        assert rows("SELECT id, allocated_count, in_stock_count FROM program") == [(1, 1, 1)]
        assert rows("SELECT id, state, code_id, country FROM claim ORDER BY id") == [
            (1, "allocated", 1, "PK"), (2, "pending", None, "GB")]
        assert rows("SELECT code_id, claim_id, program_id FROM codeassignment") == [(1, 1, 1)]
        # ... and names its claim's program (0020).
        assert rows("SELECT claim_id, code_id, status, program_id FROM outboundemail") == [
            (1, 1, "sent", 1)]
        assert rows("SELECT count(*) FROM eligibility") == [(2,)]
        assert rows("SELECT count(*) FROM auditevent WHERE program_id = 1") == [(1,)]
        if engine.dialect.name == "sqlite":
            assert rows("PRAGMA foreign_key_check") == []
    engine.dispose()


def test_sqlite_upgrade_that_would_leave_broken_references_changes_nothing(tmp_path):
    """Foreign keys are off while SQLite's migrations rebuild tables, and checked before they
    commit: a reference to no row stops the upgrade, and the database stays at its revision."""
    import sqlite3

    path = tmp_path / "broken.db"
    config = alembic_config(f"sqlite:///{path}")
    command.upgrade(config, "0003")
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute("INSERT INTO creator (id, email, handle, country, login_nonce, created_at) "
                "VALUES (1, 'a@example.com', 'a', 'PK', 0, CURRENT_TIMESTAMP)")
    raw.execute("INSERT INTO eligibility (program_id, creator_id, created_at) "
                "VALUES (99, 1, CURRENT_TIMESTAMP)")  # program 99 does not exist
    raw.commit()
    with pytest.raises(RuntimeError, match="migration 0004 left 1 broken references: "
                                           "eligibility row 1 -> program"):
        command.upgrade(config, "head")
    assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]
    raw.close()


def test_upgrade_to_0005_stores_codes_for_words_and_a_language(empty_database):
    """Claim reasons, a refusal's audit detail and the outbox's own errors were stored as
    English words: 0005 turns them into codes (and back on the way down); every creator and
    mail gets a language, English."""
    config = alembic_config(empty_database, CODE_KEYS)
    command.upgrade(config, "0004")
    engine = make_engine(empty_database)
    now = "CURRENT_TIMESTAMP"
    reasons = ["not eligible", "claim window closed", "quota reached", "country quota reached",
               "out of stock"]
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
            f"in_stock_count, code_pattern, created_at) VALUES (1, 'p1', 'P', 6, 10, 0, 0, '.*', "
            f"{now})"))
        for i, reason in enumerate(reasons, start=1):
            state = "refused" if i <= 2 else "waitlisted"
            conn.execute(sa.text(
                "INSERT INTO creator (id, email, handle, country, login_nonce, created_at) "
                f"VALUES (:i, :email, 'c', 'PK', 0, {now})"), {"i": i, "email": f"c{i}@x.org"})
            conn.execute(sa.text(
                "INSERT INTO claim (id, program_id, creator_id, country, state, reason, "
                f"requested_at) VALUES (:i, 1, :i, 'PK', :state, :reason, {now})"),
                {"i": i, "state": state, "reason": reason})
            conn.execute(sa.text(
                "INSERT INTO auditevent (at, actor, action, object_type, object_id, program_id, "
                f"detail) VALUES ({now}, 'creator', :action, 'claim', :i, 1, :detail)"),
                {"i": i, "action": "claim.refused" if state == "refused" else "claim.requested",
                 "detail": f'{{"reason": "{reason}"}}' if state == "refused" else None})
        for error in ["its code was voided before it was sent",
                      "attempt interrupted (worker stopped mid-send); outcome unknown",
                      "SMTPDataError: (451, b'try later')"]:
            conn.execute(sa.text(
                "INSERT INTO outboundemail (kind, to_email, creator_id, status, attempts, "
                f"last_error, created_at) VALUES ('sign_in', 'c1@x.org', 1, 'queued', 1, :error, "
                f"{now})"), {"error": error})

    def stored(conn):
        return ([tuple(r) for r in conn.execute(sa.text("SELECT reason FROM claim ORDER BY id"))],
                [r[0] for r in conn.execute(sa.text(
                    "SELECT detail FROM auditevent WHERE action = 'claim.refused' ORDER BY id"))],
                [r[0] for r in conn.execute(sa.text(
                    "SELECT last_error FROM outboundemail ORDER BY id"))])

    command.upgrade(config, "0005")
    with engine.connect() as conn:
        claim_reasons, details, errors = stored(conn)
        assert claim_reasons == [("not_eligible",), ("window_closed",), ("quota_reached",),
                                 ("country_quota_reached",), ("out_of_stock",)]
        assert details == ['{"reason": "not_eligible"}', '{"reason": "window_closed"}']
        assert errors == ["code_voided", "interrupted", "SMTPDataError: (451, b'try later')"]
        languages = {tuple(r) for r in conn.execute(sa.text(
            "SELECT 'creator', locale FROM creator UNION SELECT 'mail', locale "
            "FROM outboundemail"))}
        assert languages == {("creator", "en"), ("mail", "en")}
    command.downgrade(config, "0004")
    with engine.connect() as conn:
        claim_reasons, details, errors = stored(conn)
        assert claim_reasons == [(reason,) for reason in reasons]
        assert details == ['{"reason": "not eligible"}', '{"reason": "claim window closed"}']
        assert errors[:2] == ["its code was voided before it was sent",
                              "attempt interrupted (worker stopped mid-send); outcome unknown"]
    engine.dispose()


def _codes_at_0005(url: str, values: dict[int, list[str]]) -> sa.Engine:
    """A database at 0005 whose programs (by id) hold these codes in clear, the first of each
    program assigned."""
    config = alembic_config(url, CODE_KEYS)
    command.upgrade(config, "0005")
    engine = make_engine(url)
    with engine.begin() as conn:
        for program_id, codes in values.items():
            conn.execute(sa.text(
                "INSERT INTO program (id, slug, name, perk_months, quota, allocated_count, "
                "in_stock_count, code_pattern, created_at) VALUES (:id, :slug, 'P', 6, 10, 1, "
                ":stock, '.*', CURRENT_TIMESTAMP)"),
                {"id": program_id, "slug": f"p{program_id}", "stock": len(codes) - 1})
            conn.execute(sa.text(
                "INSERT INTO codebatch (id, program_id, name, code_count, created_at) "
                "VALUES (:id, :id, 'b', 0, CURRENT_TIMESTAMP)"), {"id": program_id})
            conn.execute(sa.text(
                "INSERT INTO code (program_id, batch_id, value, status) "
                "VALUES (:p, :p, :value, :status)"),
                [{"p": program_id, "value": value, "status": "assigned" if i == 0 else
                  "available"} for i, value in enumerate(codes)])
    return engine


def test_upgrade_to_0006_encrypts_every_stored_code_and_drops_the_clear_column(empty_database):
    """More codes than one batch of the migration converts, in two programs that share a code:
    each comes out as a Fernet token under the configured key with its fingerprint, the clear
    column is gone, and down and up again gives the same codes back."""
    from wellness_perks.services.code_cipher import key_id

    values = {1: [f"MIG-{i:05d}-CODE" for i in range(5003)], 2: ["MIG-00007-CODE", "OTHER-1"]}
    engine = _codes_at_0005(empty_database, values)
    config = alembic_config(empty_database, CODE_KEYS)

    def stored():
        with engine.connect() as conn:
            return [(program_id, code_value(token), bytes(fingerprint), kid, status)
                    for program_id, token, fingerprint, kid, status in conn.execute(sa.text(
                        "SELECT program_id, value_encrypted, fingerprint, key_id, status "
                        "FROM code ORDER BY id"))]

    expected = [(p, v, code_fingerprint(v), key_id(CODE_ENCRYPTION_KEY),
                 "assigned" if i == 0 else "available")
                for p, codes in values.items() for i, v in enumerate(codes)]
    for _ in range(2):
        command.upgrade(config, "0006")
        assert stored() == expected
        columns = {c["name"] for c in sa.inspect(engine).get_columns("code")}
        assert "value" not in columns
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.text(  # the same code twice in one program
                "INSERT INTO code (program_id, batch_id, value_encrypted, key_id, fingerprint, "
                "status) VALUES (2, 2, :t, 'k', :f, 'available')"),
                {"t": b"x", "f": code_fingerprint("OTHER-1")})
        command.downgrade(config, "0005")
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(sa.text(
                "SELECT program_id, value FROM code ORDER BY id"))] == [
                (p, v) for p, codes in values.items() for v in codes]
    engine.dispose()


def test_upgrade_to_0006_of_stored_codes_on_postgresql_needs_a_key(empty_database,
                                                                  monkeypatch):
    """A bare ``alembic upgrade`` reads the key from the environment; a PostgreSQL database
    with codes is never encrypted under a key made up on the spot."""
    if not empty_database.startswith("postgresql"):
        pytest.skip("SQLite makes a development key")
    engine = _codes_at_0005(empty_database, {1: ["KEEP-ME-1"]})
    monkeypatch.delenv("CODE_ENCRYPTION_KEY", raising=False)
    with pytest.raises(RuntimeError, match="CODE_ENCRYPTION_KEY is not set.*Make one with: "
                                           "python -c"):
        command.upgrade(alembic_config(empty_database), "0006")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT value FROM code")).scalars().all() == ["KEEP-ME-1"]
    engine.dispose()
