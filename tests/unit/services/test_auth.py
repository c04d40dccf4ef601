"""The sign-in and account rules (``services/auth.py``), called directly: a sign-in mail only
for an address on a list, links that work once and for LOGIN_TOKEN_MAX_AGE, and manager
accounts that store a hash, never the password. The pages are ``web/test_auth.py``'s."""

from __future__ import annotations

import json
import time

import itsdangerous.timed
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select
from werkzeug.security import check_password_hash

from tests.conftest import PRODUCTION_PASSWORD_HASH_METHOD
from wellness_perks.db import get_session
from wellness_perks.models import AuditEvent, Creator, Manager, OutboundEmail
from wellness_perks.services import auth, tokens
from wellness_perks.services.errors import Conflict, InvalidInput, NotFound

PASSWORD = "correct horse battery staple"


@pytest.fixture
def program(factory):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    return program


def _fresh(session, statement):
    session.rollback()  # a fresh snapshot: SQLite's WAL keeps a reader at its first view
    return session.exec(statement.execution_options(populate_existing=True)).all()


def _count(session, model) -> int:
    [count] = _fresh(session, select(sa.func.count()).select_from(model))
    return count


def _ayesha(session) -> Creator:
    [creator] = _fresh(session, select(Creator).where(Creator.email == "ayesha@example.com"))
    return creator


def _token(app, creator, minted_ago: int = 0, monkeypatch=None,
           mint=tokens.mint_sign_in_token) -> str:
    with app.app_context():
        if not minted_ago:
            return mint(creator)
        real_time = time.time
        with monkeypatch.context() as patch:
            patch.setattr(itsdangerous.timed.time, "time", lambda: real_time() - minted_ago)
            return mint(creator)


def _redeem(app, token: str) -> Creator:
    with app.app_context():
        return auth.redeem_sign_in_token(get_session(), token=token)


# --------------------------------------------------------------------------- request_sign_in


def test_a_sign_in_mail_is_owed_only_to_an_address_on_a_list(app, program, session,
                                                             smtp_server):
    session.add(Creator(email="former@example.com", handle="@former", country="PK"))
    session.commit()  # known, but on no program's list
    with app.app_context():
        known = auth.request_sign_in(get_session(), email=" Ayesha@Example.com ")
        unknown = auth.request_sign_in(get_session(), email="nobody@example.com")
        unlisted = auth.request_sign_in(get_session(), email="former@example.com")
    assert isinstance(known, int)
    assert unknown is None and unlisted is None
    rows = _fresh(session, select(OutboundEmail.id, OutboundEmail.to_email, OutboundEmail.kind))
    assert rows == [(known, "ayesha@example.com", "sign_in")]
    assert len(smtp_server.wait_for_mail("ayesha@example.com", "sign-in")) == 1
    assert smtp_server.to("nobody@example.com") == smtp_server.to("former@example.com") == []


def test_a_sign_in_mail_is_owed_in_its_creators_language(app, program, session, smtp_server):
    session.execute(sa.update(Creator).where(Creator.email == "ayesha@example.com")
                    .values(locale="ur"))
    session.commit()
    with app.app_context():
        outbound_id = auth.request_sign_in(get_session(), email="ayesha@example.com")
    assert _fresh(session, select(OutboundEmail.locale).where(
        OutboundEmail.id == outbound_id)) == ["ur"]


def test_an_unknown_creator_is_not_found(app):
    with app.app_context(), pytest.raises(NotFound, match="^no creator with id 424242$"):
        auth.get_creator(get_session(), creator_id=424242)


@pytest.mark.parametrize(("address", "code"), [("not-an-email", "email_invalid"),
                                               ("ayesha@", "email_invalid"),
                                               ("  ", "email_empty")])
def test_a_malformed_address_is_refused_and_owes_nothing(app, program, session, smtp_server,
                                                         address, code):
    with app.app_context(), pytest.raises(InvalidInput) as refused:
        auth.request_sign_in(get_session(), email=address)
    assert (refused.value.code, refused.value.field) == (code, "email")
    assert _count(session, OutboundEmail) == 0
    assert smtp_server.messages == []


# --------------------------------------------------------------------------- redeem_sign_in_token


def test_a_link_signs_its_creator_in_once(app, program, session):
    creator = _ayesha(session)
    nonce = creator.login_nonce
    token = _token(app, creator)
    assert _redeem(app, token).id == creator.id
    after = _ayesha(session)
    assert after.login_nonce == nonce + 1 and after.last_login_at is not None
    events = _fresh(session, select(AuditEvent.action, AuditEvent.actor, AuditEvent.object_type,
                                    AuditEvent.object_id, AuditEvent.at)
                    .where(AuditEvent.action == "creator.signed_in"))
    assert events == [("creator.signed_in", f"creator:{creator.id}", "creator", creator.id,
                       after.last_login_at)]
    with pytest.raises(auth.SignInLinkUsed):
        _redeem(app, token)
    assert _ayesha(session).login_nonce == nonce + 1


def test_using_a_link_spends_the_links_minted_before_it(app, program, session, monkeypatch):
    creator = _ayesha(session)
    older = _token(app, creator, minted_ago=60, monkeypatch=monkeypatch)
    newer = _token(app, creator)
    assert older != newer
    _redeem(app, newer)
    with pytest.raises(auth.SignInLinkUsed):
        _redeem(app, older)


def test_an_expired_link_is_refused(app, program, session, monkeypatch):
    assert app.config["LOGIN_TOKEN_MAX_AGE"] == 15 * 60
    creator = _ayesha(session)
    nonce = creator.login_nonce
    with pytest.raises(auth.SignInLinkExpired):
        _redeem(app, _token(app, creator, minted_ago=16 * 60, monkeypatch=monkeypatch))
    assert _ayesha(session).login_nonce == nonce  # nothing spent
    assert _redeem(app, _token(app, creator, minted_ago=14 * 60,
                               monkeypatch=monkeypatch)).id == creator.id


def test_an_invitations_link_works_for_days_once_and_while_it_is_the_newest(
        app, program, session, monkeypatch):
    """An invitation is read when its creator finds it: its link lives INVITE_LINK_MAX_AGE
    (7 days), not a sign-in link's 15 minutes; it is spent like any sign-in link."""
    assert app.config["INVITE_LINK_MAX_AGE"] == 7 * 24 * 3600
    creator = _ayesha(session)
    week = 7 * 24 * 3600
    nonce = creator.login_nonce
    with pytest.raises(auth.SignInLinkExpired):
        _redeem(app, _token(app, creator, minted_ago=week + 60, monkeypatch=monkeypatch,
                            mint=tokens.mint_invitation_token))
    assert _ayesha(session).login_nonce == nonce  # nothing spent
    invitation = _token(app, creator, minted_ago=week - 3600, monkeypatch=monkeypatch,
                        mint=tokens.mint_invitation_token)
    assert _redeem(app, invitation).id == creator.id
    with pytest.raises(auth.SignInLinkUsed):
        _redeem(app, invitation)
    # A newer link asked for since supersedes an invitation's, as any older link.
    creator = _ayesha(session)
    older = _token(app, creator, minted_ago=60, monkeypatch=monkeypatch,
                   mint=tokens.mint_invitation_token)
    with app.app_context():
        auth.request_sign_in(get_session(), email="ayesha@example.com")
    with pytest.raises(auth.SignInLinkSuperseded):
        _redeem(app, older)


def test_a_sign_in_link_is_not_an_invitations_nor_the_reverse(app, program, session):
    """Each kind is signed under its own salt: a sign-in link's token checked as an
    invitation's fails, and so does the reverse (an old sign-in link cannot pass for an
    invitation to live seven days)."""
    creator = _ayesha(session)
    with app.app_context():
        sign_in, invitation = (tokens.mint_sign_in_token(creator),
                               tokens.mint_invitation_token(creator))
        with pytest.raises(itsdangerous.BadSignature):
            tokens.parse_invitation_token(sign_in, max_age=3600)
        with pytest.raises(itsdangerous.BadSignature):
            tokens.parse_sign_in_token(invitation, max_age=3600)
        assert tokens.parse_invitation_token(invitation, max_age=3600) == (
            creator.id, creator.login_nonce)


@pytest.mark.parametrize("forge", [
    lambda app, c, t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
    lambda app, c, t: "x" + t,                                              # payload changed
    lambda app, c, t: "garbage",
    lambda app, c, t: itsdangerous.URLSafeTimedSerializer(
        "another-key", salt=tokens.SIGN_IN_SALT).dumps({"c": c.id, "n": c.login_nonce}),
    lambda app, c, t: itsdangerous.URLSafeTimedSerializer(
        app.config["SECRET_KEY"], salt=tokens.SIGN_IN_SALT).dumps({"c": 999999, "n": 0}),
    lambda app, c, t: itsdangerous.URLSafeTimedSerializer(
        app.config["SECRET_KEY"], salt=tokens.SIGN_IN_SALT).dumps([c.id, c.login_nonce]),
    lambda app, c, t: itsdangerous.URLSafeTimedSerializer(
        app.config["SECRET_KEY"], salt=tokens.SIGN_IN_SALT).dumps({"c": c.id}),
], ids=["signature", "payload", "garbage", "another-key", "unknown-creator", "not-a-link",
        "no-nonce"])
def test_a_forged_link_is_refused(app, program, session, forge):
    creator = _ayesha(session)
    nonce = creator.login_nonce
    with pytest.raises(auth.SignInLinkInvalid):
        _redeem(app, forge(app, creator, _token(app, creator)))
    assert _ayesha(session).login_nonce == nonce


def test_a_creator_is_found_by_id(app, program, session):
    creator = _ayesha(session)
    with app.app_context():
        assert auth.get_creator(get_session(), creator_id=creator.id).email == creator.email


def test_a_session_names_its_creator_while_its_version_holds(app, program, session):
    """Who a session names, in full, while the creator's sessions have not been ended; None
    once they have, and None for a creator who is no longer there (forgotten)."""
    creator = _ayesha(session)
    session.execute(sa.update(Creator).where(Creator.id == creator.id)
                    .values(handle="ayesha_writes", locale="ur"))
    session.commit()
    with app.app_context():
        named = auth.signed_in_creator(get_session(), creator_id=creator.id,
                                       session_version=creator.session_version)
        assert named == auth.SignedInCreator(creator.id, "ayesha@example.com", "ayesha_writes",
                                             "ur", creator.session_version)
        assert auth.signed_in_creator(get_session(), creator_id=creator.id,
                                      session_version=creator.session_version + 1) is None
        assert auth.signed_in_creator(get_session(), creator_id=424242,
                                      session_version=creator.session_version) is None
        auth.end_sessions(get_session(), creator_id=creator.id)
        assert auth.signed_in_creator(get_session(), creator_id=creator.id,
                                      session_version=creator.session_version) is None


def test_ending_a_creators_sessions_ends_no_one_elses(app, program, session):
    ayesha = _ayesha(session)
    ayesha_id, version = ayesha.id, ayesha.session_version
    [bilal] = _fresh(session, select(Creator).where(Creator.email == "bilal@example.com"))
    with app.app_context():
        auth.end_sessions(get_session(), creator_id=ayesha_id)
        assert auth.signed_in_creator(get_session(), creator_id=bilal.id,
                                      session_version=bilal.session_version) is not None
    assert _ayesha(session).session_version != version


def test_the_creator_signed_in_is_read_afresh_in_a_session_that_held_it(app, program,
                                                                          session):
    """The app's sessions keep what they loaded across commits: the creator returned carries
    the spent nonce and the time of this sign-in even when the session loaded it before."""
    creator = _ayesha(session)
    token = _token(app, creator)
    with app.app_context():
        own = get_session()
        held = own.get(Creator, creator.id)  # kept: the session's identity map holds it
        signed_in = auth.redeem_sign_in_token(own, token=token)
        assert signed_in is held
        assert (signed_in.login_nonce, signed_in.last_login_at is not None) == (
            creator.login_nonce + 1, True)


# --------------------------------------------------------------------------- create_manager


def test_a_stored_password_costs_scrypt_at_its_production_work_factor(app, session,
                                                                      monkeypatch):
    monkeypatch.setattr(auth, "PASSWORD_HASH_METHOD", PRODUCTION_PASSWORD_HASH_METHOD)
    with app.app_context():
        auth.create_manager(get_session(), email="boss@example.com", password=PASSWORD,
                            actor="test")
    [manager] = _fresh(session, select(Manager))
    # werkzeug's format: method:N:r:p$salt$hash; N = 2^15 rounds over r = 8 blocks (32 MiB).
    assert manager.password_hash.startswith("scrypt:32768:8:1$")
    assert check_password_hash(manager.password_hash, PASSWORD)


def test_create_manager_stores_a_hash_not_the_password(app, session):
    with app.app_context():
        created = auth.create_manager(get_session(), email="Boss@Example.COM", password=PASSWORD,
                                      actor="test")
    assert created.email == "boss@example.com"
    [manager] = _fresh(session, select(Manager))
    assert manager.email == "boss@example.com"
    assert PASSWORD not in manager.password_hash
    assert manager.password_hash.split(":")[0] in {"scrypt", "pbkdf2"}  # werkzeug's format
    assert check_password_hash(manager.password_hash, PASSWORD)
    assert not check_password_hash(manager.password_hash, PASSWORD + "!")
    [event] = _fresh(session, select(AuditEvent))
    assert event.action == "manager.created" and PASSWORD not in (event.detail or "")
    assert (event.object_type, event.object_id, json.loads(event.detail)) == (
        "manager", manager.id, {"email": "boss@example.com", "role": "manager"})


@pytest.mark.parametrize(("email", "password", "role", "message", "field", "code"), [
    ("boss@example.com", "elevenchars", "manager", "password must be at least 12 characters",
     "password", "password_too_short"),
    ("boss@example.com", "", "manager", "password must be at least 12 characters", "password",
     "password_too_short"),
    ("not-an-email", PASSWORD, "manager", "not a valid email address", "email",
     "email_invalid"),
    ("boss@", PASSWORD, "manager", "not a valid email address", "email", "email_invalid"),
    ("", PASSWORD, "manager", "email address is empty", "email", "email_empty"),
    ("boss@example.com", PASSWORD, "owner", "role must be one of viewer, manager, admin",
     "role", "manager_role_unknown"),
])
def test_create_manager_refuses_bad_input(app, session, email, password, role, message, field,
                                          code):
    with app.app_context(), pytest.raises(InvalidInput) as refused:
        auth.create_manager(get_session(), email=email, password=password, actor="test",
                            role=role)
    assert str(refused.value).startswith(message), str(refused.value)
    assert (refused.value.field, refused.value.code) == (field, code)
    assert _count(session, Manager) == 0
    assert _count(session, AuditEvent) == 0


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_a_manager_is_created_with_the_role_asked_for(app, session, role):
    with app.app_context():
        auth.create_manager(get_session(), email="boss@example.com", password=PASSWORD,
                            actor="test", role=role)
    [manager] = _fresh(session, select(Manager))
    assert manager.role == role
    [event] = _fresh(session, select(AuditEvent))
    assert (event.action, json.loads(event.detail) if isinstance(event.detail, str)
            else event.detail) == ("manager.created", {"email": "boss@example.com", "role": role})


def test_a_password_of_twelve_characters_is_long_enough(app, session):
    with app.app_context():
        auth.create_manager(get_session(), email="boss@example.com", password="twelve chars",
                            actor="test")
    assert _count(session, Manager) == 1


def test_create_manager_refuses_a_duplicate_whatever_the_case(app, session):
    with app.app_context():
        auth.create_manager(get_session(), email="boss@example.com", password=PASSWORD,
                            actor="test")
    [before] = _fresh(session, select(Manager))
    with app.app_context(), pytest.raises(
            Conflict, match="^a manager with email boss@example.com already exists$") as refused:
        auth.create_manager(get_session(), email="BOSS@example.com",
                            password="another password!", actor="test")
    assert refused.value.code == "manager_exists"
    [after] = _fresh(session, select(Manager))
    assert (after.id, after.password_hash) == (before.id, before.password_hash)
    assert _count(session, AuditEvent) == 1


# --------------------------------------------------------------------------- a manager's sign-in


def _boss(app, session, **values) -> Manager:
    with app.app_context():
        auth.create_manager(get_session(), email="boss@example.com", password=PASSWORD,
                            actor="test", role="admin")
    if values:
        session.execute(sa.update(Manager).values(**values))
        session.commit()
    [boss] = _fresh(session, select(Manager))
    return boss


@pytest.mark.parametrize("two_factor", [False, True])
def test_a_manager_is_named_in_full_at_each_step_of_a_sign_in(app, session, two_factor):
    """The password names the manager (and asks for a code when two-factor is on, enrolment
    for an admin without it); the sign-in then begins their session, and the session names
    them while its version holds."""
    boss = _boss(app, session, **({"totp_enabled_at": sa.func.now()} if two_factor else {}))
    expected = auth.SignedInManager(boss.id, "boss@example.com", "admin", boss.session_version,
                                    two_factor)
    with app.app_context():
        checked = auth.check_manager_password(get_session(), email="Boss@Example.com",
                                              password=PASSWORD)
        assert checked == expected
        assert checked.second_step == ("code" if two_factor else "enroll")
        assert auth.record_manager_sign_in(get_session(), manager_id=boss.id,
                                           session_version=boss.session_version) == expected
        assert auth.signed_in_manager(get_session(), manager_id=boss.id,
                                      session_version=boss.session_version) == expected
        assert auth.signed_in_manager(get_session(), manager_id=boss.id,
                                      session_version=boss.session_version + 1) is None


@pytest.mark.parametrize(("method", "detail"), [
    (None, None), ("password", None), ("totp", {"second_factor": "totp"}),
    ("recovery_code", {"second_factor": "recovery_code"})])
def test_a_managers_sign_in_is_audited_with_its_last_step(app, session, method, detail):
    boss = _boss(app, session)
    with app.app_context():
        kwargs = {} if method is None else {"method": method}
        auth.record_manager_sign_in(get_session(), manager_id=boss.id,
                                    session_version=boss.session_version, **kwargs)
    [event] = _fresh(session, select(AuditEvent).where(AuditEvent.action == "manager.signed_in"))
    assert (event.actor, event.object_id) == (f"manager:{boss.id}", boss.id)
    stored = json.loads(event.detail) if isinstance(event.detail, str) else event.detail
    assert stored == detail
    assert _fresh(session, select(Manager.last_login_at))[0] is not None


@pytest.mark.parametrize("change", ["disabled", "sessions ended", "unknown"])
def test_a_sign_in_is_not_begun_for_an_account_changed_since_its_password(app, session, change):
    """Disabled, or its sessions ended, between the password and the last step (or no such
    manager): no session begins, nothing is recorded."""
    boss = _boss(app, session)
    manager_id = boss.id
    if change == "disabled":
        session.execute(sa.update(Manager).values(disabled_at=sa.func.now()))
        session.commit()
    elif change == "sessions ended":
        with app.app_context():
            auth.end_manager_sessions(get_session(), manager_id=boss.id)
    else:
        manager_id = boss.id + 1
    with app.app_context(), pytest.raises(auth.PasswordRejected):
        auth.record_manager_sign_in(get_session(), manager_id=manager_id,
                                    session_version=boss.session_version)
    assert not _fresh(session, select(AuditEvent).where(AuditEvent.action == "manager.signed_in"))
    assert _fresh(session, select(Manager.last_login_at)) == [None]


# --------------------------------------------------------------------------- newest link only


def _link_of(app, session) -> str:
    """The token a sign-in mail sent now would carry."""
    return _token(app, _ayesha(session))


def test_asking_for_a_link_supersedes_every_earlier_unused_one(app, program, session):
    with app.app_context():
        auth.request_sign_in(get_session(), email="ayesha@example.com")
    older = _link_of(app, session)
    with app.app_context():
        auth.request_sign_in(get_session(), email="ayesha@example.com")
    newer = _link_of(app, session)
    with app.app_context(), pytest.raises(auth.SignInLinkSuperseded):
        auth.inspect_sign_in_link(get_session(), token=older)
    with pytest.raises(auth.SignInLinkSuperseded):
        _redeem(app, older)
    assert _redeem(app, newer).email == "ayesha@example.com"
    with pytest.raises(auth.SignInLinkUsed):  # older than the one used: used up with it
        _redeem(app, older)


def test_inspecting_a_link_spends_nothing(app, program, session):
    token = _link_of(app, session)
    nonce = _ayesha(session).login_nonce
    with app.app_context():
        for _ in range(3):
            link = auth.inspect_sign_in_link(get_session(), token=token)
    assert link.masked_email == "a***@example.com"
    assert _ayesha(session).login_nonce == nonce
    _redeem(app, token)
    with app.app_context(), pytest.raises(auth.SignInLinkUsed):
        auth.inspect_sign_in_link(get_session(), token=token)


# --------------------------------------------------------------------------- the token parser


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.one_of(
    st.text(max_size=200),
    st.builds(lambda payload: itsdangerous.URLSafeTimedSerializer(
        "test-secret-key", salt=tokens.SIGN_IN_SALT).dumps(payload),
              st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.fixed_dictionaries({"c": st.integers(), "n": st.integers()})
                           | st.dictionaries(st.sampled_from(["c", "n", "x"]), inner,
                                             max_size=3), max_leaves=6))))
def test_any_token_is_a_sign_in_or_a_refusal_never_an_exception(app, program, token):
    """Whatever a link carries, well signed or not: a creator, or a SignInLinkError."""
    with app.app_context():
        for attempt in (auth.inspect_sign_in_link, auth.redeem_sign_in_token):
            try:
                attempt(get_session(), token=token)
            except auth.SignInLinkError:
                pass


# --------------------------------------------------------------------------- dropped connections


def _cut_the_pooled_connection(app) -> None:
    """End, from outside, the connection the pool will hand out next (a database restart or
    failover does this to every pooled connection)."""
    doomed = get_session()
    pid = doomed.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    doomed.rollback()  # back to the pool, which hands it out again next
    outsider = sa.create_engine(app.config["DATABASE_URL"], poolclass=sa.pool.NullPool)
    with outsider.begin() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    outsider.dispose()


def test_a_managers_page_survives_its_connection_being_cut(app, session, backend):
    if backend != "postgresql":
        pytest.skip("SQLite has no server to cut a connection")
    boss = _boss(app, session)
    session.close()
    with app.app_context():
        _cut_the_pooled_connection(app)
        named = auth.signed_in_manager(get_session(), manager_id=boss.id,
                                       session_version=boss.session_version)
    assert named is not None and named.email == "boss@example.com"


@pytest.mark.parametrize("step", ["open the link", "press its button", "a signed-in page"])
def test_a_sign_in_survives_its_connection_being_cut(step, app, program, session, backend):
    if backend != "postgresql":
        pytest.skip("SQLite has no server to cut a connection")
    creator = _ayesha(session)
    token = _token(app, creator)
    session.close()
    with app.app_context():
        _cut_the_pooled_connection(app)
        if step == "open the link":
            link = auth.inspect_sign_in_link(get_session(), token=token)
            assert link.creator_id == creator.id
        elif step == "press its button":
            assert auth.redeem_sign_in_token(get_session(), token=token).id == creator.id
        else:
            signed_in = auth.signed_in_creator(get_session(), creator_id=creator.id,
                                               session_version=creator.session_version)
            assert signed_in is not None and signed_in.email == "ayesha@example.com"
    spent = _ayesha(session).login_used_nonce is not None
    assert spent == (step == "press its button")
    signed_in_events = _fresh(session, select(AuditEvent.id)
                              .where(AuditEvent.action == "creator.signed_in"))
    assert len(signed_in_events) == (1 if step == "press its button" else 0)
