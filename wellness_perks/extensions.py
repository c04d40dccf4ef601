"""Extensions created without an app and bound in the factory."""

from __future__ import annotations

from flask_login import LoginManager, UserMixin
from flask_wtf import CSRFProtect

csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Sign in to see your perks."


class CreatorUser(UserMixin):
    """The signed-in creator as Flask-Login sees them. Ids are prefixed by kind ("c:12"), so
    managers can share the session machinery later.

    Loading one costs no query: the signed session names the creator, and their email and
    handle are read only when a page shows them (a claim request never does).
    """

    kind = "c"

    def __init__(self, creator_id: int, email: str | None = None,
                 handle: str | None = None) -> None:
        self.creator_id = creator_id
        self._email = email
        self._handle = handle

    def get_id(self) -> str:
        return f"{self.kind}:{self.creator_id}"

    def _load(self) -> None:
        from .db import get_session
        from .models import Creator

        creator = get_session().get(Creator, self.creator_id)
        self._email, self._handle = creator.email, creator.handle

    @property
    def email(self) -> str:
        if self._email is None:
            self._load()
        return self._email

    @property
    def handle(self) -> str:
        if self._handle is None:
            self._load()
        return self._handle


@login_manager.user_loader
def load_user(user_id: str):
    kind, _, raw_id = user_id.partition(":")
    if kind != CreatorUser.kind or not raw_id.isdigit():
        return None
    return CreatorUser(int(raw_id))
