"""The tokens of links in mails, itsdangerous tokens signed with SECRET_KEY, each kind under a
salt of its own (a token of one kind is never taken for another):

- the sign-in token names a creator and the number of their newest sign-in link
  (``login_nonce``). Asking for a link and using one bump the number, so only the newest link
  works, and once (``auth.redeem_sign_in_token``);
- the invitation token is a sign-in token of an invitation or reminder mail: the same payload
  and the same once-and-newest rule, under a salt of its own, so that it may live
  INVITE_LINK_MAX_AGE (days: an invitation is read when its creator finds it) where a link the
  creator just asked for lives LOGIN_TOKEN_MAX_AGE (minutes);
- the opt-out token names a creator and a program whose invitation mails they want no more
  (``invitations.opt_out``). It never expires: the link of an old invitation still works."""

from __future__ import annotations

from flask import current_app
from itsdangerous import BadPayload, BadSignature, URLSafeSerializer, URLSafeTimedSerializer

from ..models import Creator

SIGN_IN_SALT = "wellness-perks.sign-in"
INVITATION_SALT = "wellness-perks.invitation"
OPT_OUT_SALT = "wellness-perks.opt-out"
# A token minted here is about 80 characters of URL-safe base64 and dots; anything else (longer,
# or with another character) is not one, and is refused before any decoding.
MAX_TOKEN_LENGTH = 1000
_TOKEN_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
MAX_ID = 2**31 - 1  # the largest id and counter the INTEGER columns hold (PostgreSQL)


def serializer(salt: str = SIGN_IN_SALT) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=salt)


def mint_sign_in_token(creator: Creator) -> str:
    """A signed token naming the creator and their current nonce; minted at mail-send time."""
    return serializer().dumps({"c": creator.id, "n": creator.login_nonce})


def mint_invitation_token(creator: Creator) -> str:
    """The sign-in token of an invitation mail (the same payload, the invitation's salt)."""
    return serializer(INVITATION_SALT).dumps({"c": creator.id, "n": creator.login_nonce})


def _well_formed(token: str) -> None:
    if (not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH
            or not _TOKEN_CHARACTERS.issuperset(token)):
        raise BadSignature("not a token of ours")


def _two_ids(payload, keys: tuple[str, str], high: tuple[int, int]) -> tuple[int, int]:
    """The two integers a payload of these two keys holds, each in 0 < value <= high (the
    first) or 0 <= value <= high; BadPayload for any other payload."""
    if not isinstance(payload, dict) or set(payload) != set(keys):
        raise BadPayload("not a payload of ours")
    first, second = payload[keys[0]], payload[keys[1]]
    # type() and not isinstance(): JSON true is a bool, which Python counts as the int 1.
    if not (type(first) is int and type(second) is int
            and 0 < first <= high[0] and 0 <= second <= high[1]):
        raise BadPayload("not a payload of ours")
    return first, second


def mint_opt_out_token(*, creator_id: int, program_id: int) -> str:
    """A signed token naming a creator and a program, for the one-click opt-out of the
    program's invitation mails; minted at mail-send time."""
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=OPT_OUT_SALT).dumps(
        {"c": creator_id, "p": program_id})


def parse_opt_out_token(token: str) -> tuple[int, int]:
    """The (creator id, program id) an opt-out token minted here names; itsdangerous' BadData
    for anything else (not a token, forged, damaged, another kind's, another payload)."""
    _well_formed(token)
    payload = URLSafeSerializer(current_app.config["SECRET_KEY"], salt=OPT_OUT_SALT).loads(token)
    creator_id, program_id = _two_ids(payload, ("c", "p"), (MAX_ID, MAX_ID))
    if program_id == 0:
        raise BadPayload("not a payload of ours")
    return creator_id, program_id


def parse_sign_in_token(token: str, *, max_age: int) -> tuple[int, int]:
    """The (creator id, sign-in counter) a token minted here names.

    Raises itsdangerous' SignatureExpired for a genuine token older than ``max_age`` seconds,
    and another BadData for anything else: text that is not a token, a forged or damaged one,
    a signed one whose payload is not two integers in the databases' range.
    """
    return _creator_and_counter(token, salt=SIGN_IN_SALT, max_age=max_age)


def parse_invitation_token(token: str, *, max_age: int) -> tuple[int, int]:
    """The (creator id, sign-in counter) an invitation token minted here names; raises as
    ``parse_sign_in_token`` does (a sign-in token is not an invitation token, nor the reverse)."""
    return _creator_and_counter(token, salt=INVITATION_SALT, max_age=max_age)


def _creator_and_counter(token: str, *, salt: str, max_age: int) -> tuple[int, int]:
    _well_formed(token)
    payload = serializer(salt).loads(token, max_age=max_age)
    return _two_ids(payload, ("c", "n"), (MAX_ID, MAX_ID))
