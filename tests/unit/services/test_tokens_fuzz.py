"""Fuzzing the sign-in token parser (``tokens.parse_sign_in_token``, through
``auth.inspect_sign_in_link`` and ``auth.redeem_sign_in_token``): whatever a link carries (any
text, a token cut short or tampered with, a token signed with the right key around any JSON)
ends in a sign-in link error or in the sign-in of the creator it names, never in an exception;
on SQLite and PostgreSQL."""

from __future__ import annotations

import itsdangerous
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wellness_perks.db import get_session
from wellness_perks.services import auth, tokens

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

EXAMPLES = {"sqlite": 300, "postgresql": 100}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=6,
)
ID_LIKE = (st.integers(min_value=-(2**70), max_value=2**70) | st.booleans() | st.none()
           | st.floats() | st.text(max_size=5) | st.lists(st.integers(), max_size=2))


@pytest.fixture
def ayesha(factory):
    program = factory.program()
    factory.creators(program, ["ayesha@example.com"])
    return 1


def _fuzz(backend):
    return settings(max_examples=EXAMPLES[backend], deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _outcome(app, token):
    """Looking at the link (what GET and HEAD do), then using it (the POST): the creator signed
    in, or the error's code. Looking never fails where using would not."""
    with app.app_context():
        try:
            looked = auth.inspect_sign_in_link(get_session(), token=token).creator_id
        except auth.SignInLinkError as exc:
            looked = exc.code
        try:
            used = auth.redeem_sign_in_token(get_session(), token=token).id
        except auth.SignInLinkError as exc:
            used = exc.code
    assert looked == used or isinstance(looked, int) and used == "sign_in_link_used"
    return used


def test_any_text_is_a_sign_in_link_error(app, backend, ayesha):
    with app.app_context():
        real = tokens.serializer().dumps({"c": 1, "n": 0})

    @_fuzz(backend)
    @given(st.text() | st.just(real).flatmap(
        lambda t: st.tuples(st.integers(0, len(t)), st.text(max_size=3))
        .map(lambda cut: t[:cut[0]] + cut[1] + t[cut[0] + 1:])))
    @example("")
    @example("\udcff")  # a lone surrogate: not even encodable
    @example("é" + real)
    @example(real + "x")
    @example("x" * 100_000)
    def run(token):
        outcome = _outcome(app, token)
        if outcome != "sign_in_link_invalid":  # the same token (base64 ignores a last bit)
            with app.app_context():
                assert tokens.serializer().loads(token) == {"c": 1, "n": 0}
            assert outcome in (1, "sign_in_link_used")

    run()


def test_a_signed_token_around_any_payload_never_raises(app, backend, ayesha):
    """Only a token minted here signs in; one signed with the key around any other JSON (a
    token of an older format, or of a bug) is an invalid link, whatever its values."""

    @_fuzz(backend)
    @given(JSON | st.fixed_dictionaries({"c": ID_LIKE, "n": ID_LIKE}, optional={"x": JSON}))
    @example({"c": 1, "n": 0})
    @example({"c": "1", "n": 0})  # SQLite would compare the text to the id and sign in
    @example({"c": True, "n": 0})  # True == 1
    @example({"c": 1.0, "n": 0})
    @example({"c": 2**31, "n": 0})  # past PostgreSQL's INTEGER: found by this test
    @example({"c": 1, "n": 2**31})
    @example({"c": 2**64, "n": 0})  # past SQLite's integers too
    @example({"c": 1, "n": -(2**64)})
    @example({"c": None, "n": 0})
    @example({"c": [1], "n": 0})
    @example([1, 0])
    def run(payload):
        with app.app_context():
            token = tokens.serializer().dumps(payload)
        outcome = _outcome(app, token)
        if payload == {"c": 1, "n": 0} and type(payload["c"]) is int \
                and type(payload["n"]) is int:
            assert outcome in (1, "sign_in_link_used")  # used once, by the first such example
        else:
            assert outcome in ("sign_in_link_invalid", "sign_in_link_used",
                               "sign_in_link_superseded"), payload
            if outcome != "sign_in_link_invalid":  # names Ayesha, with a counter she is past
                assert type(payload["c"]) is int and payload["c"] == 1
                assert type(payload["n"]) is int and payload["n"] >= 0

    run()


def test_the_parser_names_two_integers_or_raises_bad_data(app):
    """Without a database: what ``parse_sign_in_token`` returns is always an id and a
    counter in the databases' range; anything else is itsdangerous' BadData."""
    with app.app_context():
        ctx_serializer = tokens.serializer()

        @settings(max_examples=500, deadline=None, database=None)
        @given(st.text() | JSON.map(ctx_serializer.dumps)
               | st.fixed_dictionaries({"c": ID_LIKE, "n": ID_LIKE}).map(ctx_serializer.dumps))
        def run(token):
            try:
                creator_id, nonce = tokens.parse_sign_in_token(token, max_age=60)
            except itsdangerous.BadData:
                return
            assert type(creator_id) is int and 0 < creator_id <= tokens.MAX_ID
            assert type(nonce) is int and 0 <= nonce <= tokens.MAX_ID

        run()
