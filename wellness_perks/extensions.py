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
    managers can share the session machinery later."""

    kind = "c"

    def __init__(self, creator_id: int, email: str, handle: str) -> None:
        self.creator_id = creator_id
        self.email = email
        self.handle = handle

    def get_id(self) -> str:
        return f"{self.kind}:{self.creator_id}"


@login_manager.user_loader
def load_user(user_id: str):
    from .db import get_session
    from .models import Creator

    kind, _, raw_id = user_id.partition(":")
    if kind != CreatorUser.kind or not raw_id.isdigit():
        return None
    creator = get_session().get(Creator, int(raw_id))
    if creator is None:
        return None
    return CreatorUser(creator.id, creator.email, creator.handle)
