"""What the hub does with users, shared by the REST API, the pages and the command line."""

from __future__ import annotations

import logging
import os
import time

from .access import Access
from .access import db as access_db
from .auth import names
from .auth import secrets as S
from .auth.base import Authenticator
from .auth.native import NativeAuthenticator
from .errors import BadRequest, Conflict, Forbidden, NotFound, SpawnError
from .spawner import accounts
from .store import Store, Token, User

MAX_TOKENS = 1000  # API tokens per user (servers' and OAuth's are not counted)
log = logging.getLogger("minihub.users")


async def get(store: Store, name: str) -> User:
    user = await store.get_user(names.normalise(name))
    if user is None:
        raise NotFound(f"No such user: {names.normalise(name)[:64]!r}")
    return user


async def create(
    store: Store,
    auth: Authenticator,
    name: str,
    admin: bool = False,
    password: str | None = None,
    access: Access | None = None,
) -> User:
    """A new user; `admin` assigns the admin role (through the hub's `access` when it runs)."""
    name = names.validate(name)
    if name in auth.blocked_users:
        raise BadRequest(f"{name} is blocked ([auth] blocked_users)")
    if await store.get_user(name):
        raise Conflict(f"User {name} already exists")
    hashed = None
    if password is not None:
        if not isinstance(auth, NativeAuthenticator):
            raise BadRequest(
                "Passwords are set only with the native authenticator; "
                "PAM users log in with their system password."
            )
        hashed = await auth.hash_new_password(password)
    user = await store.add_user(name, hashed)
    if admin and access is not None:
        await access.set_admin(user.name, True)
    elif admin:
        await access_db.assign_role(store, "admin", user.name)
    return user


async def sign_up(
    store: Store, auth: Authenticator, name: str, password: str, email: str = ""
) -> User | None:
    """A new user by open sign-up: only a name that belongs to nobody yet. With
    `[auth] signup_approval` a request instead (None): minihub.auth.signups.

    Sign-up binds a password to a name, and on a root hub the name is also a Unix account
    whose files a server runs with. So a name that is a hub user, a Unix account (even one
    that never used the hub) or a configured admin is refused, and on a root hub the account
    is made here, by useradd, which is the atomic arbiter: a name some other process creates
    first makes it fail. No signed-up user is ever left waiting for an account of its name
    to appear later, since that account would be someone else's.
    """
    if not isinstance(auth, NativeAuthenticator) or not auth.can_signup:
        raise NotFound("Sign-up is not open on this hub.")
    name = names.validate(name)
    if not auth.is_allowed(name) or name in auth.admin_users:
        raise Forbidden("That name may not sign up.")
    taken = Conflict(f"The name {name} is taken. Choose another.")
    if await store.get_user(name):
        raise taken
    if await auth.pool.run(accounts.account_exists, name):
        raise taken
    if auth.signup_approval:
        if await auth.signups.get(name) is not None:
            raise taken
        email = check_email(email) if auth.signup_ask_email else ""
        await auth.signups.add(name, await auth.hash_new_password(password), email)
        return None  # the account is made when an admin approves
    hashed = await auth.hash_new_password(password)
    if os.geteuid() == 0:
        try:
            await accounts.create_system_user(name)
        except SpawnError as e:
            log.warning("sign-up of %s refused: %s", name, e.message)
            raise taken from None
    return await store.add_user(name, hashed)


def check_email(email: str) -> str:
    """A sign-up's email: one plausible address (the admin who approves reads it)."""
    email = email.strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or len(email) > 254 or not email.isprintable():
        raise BadRequest("Give an email address such as you@example.org.")
    if any(c.isspace() for c in email):
        raise BadRequest("An email address has no spaces.")
    return email


async def set_password(store: Store, auth: Authenticator, user: User, password: str) -> None:
    if not isinstance(auth, NativeAuthenticator):
        raise BadRequest(
            "Passwords are set only with the native authenticator "
            '([auth] authenticator = "native"); PAM users use passwd.'
        )
    await store.set_password_hash(user.id, await auth.hash_new_password(password))
    await store.delete_user_sessions(user.id)


async def login(
    store: Store,
    access: Access,
    name: str,
    admin: bool | None,
    groups: list[str] | None = None,
) -> User:
    """The hub user for someone the authenticator let in; created on first login. `admin`
    and `groups` (None: leave as they are) are what the authenticator says of them."""
    user = await store.get_user(name)
    if user is None:
        user = await store.add_user(name)
    if admin is not None and admin != access.is_admin(name):
        await access.set_admin(name, admin)
    if groups is not None:
        await access.set_user_groups(name, groups)
    await store.touch_user(user.id)
    return user


async def new_token(
    store: Store,
    user: User,
    note: str = "",
    scopes: list[str] | None = None,
    expires_in: float | None = None,
) -> tuple[str, Token]:
    """A new API token; BadRequest once the user has MAX_TOKENS (each is a row kept until
    it expires or is deleted, and listing them costs the hub a pass over all)."""
    if await store.count_api_tokens(user.id) >= MAX_TOKENS:
        raise BadRequest(
            f"{user.name} has {MAX_TOKENS} API tokens already: delete some first "
            "(the token page, or DELETE /hub/api/users/<name>/tokens/<id>)."
        )
    secret = S.new_token()
    expires = time.time() + expires_in if expires_in else None
    tok = await store.add_token(
        user.id, S.hash_token(secret), secret[: S.PREFIX_LEN], note, scopes or [], expires
    )
    return secret, tok


async def new_session(store: Store, user: User, max_age: float) -> str:
    sid = S.new_token()
    await store.add_session(S.hash_token(sid), user.id, max_age)
    return sid
