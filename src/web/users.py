"""The console's people: a JSON file of names, roles and argon2 password hashes.

    {"users": [{"name": "alice", "role": "operator", "password_hash": "$argon2id$..."}]}

`isdr users add NAME --role viewer|operator` writes it (the password is asked, never an
argument). The file is read again when it changes, so adding or removing a person needs
no restart; a person removed from it loses their sessions at their next request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from isdr.errors import ConfigError

logger = logging.getLogger(__name__)

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 10
# A hash to verify against when the name is unknown, so that a wrong name costs the
# same time as a wrong password (the answer does not tell which names exist).
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class Role(StrEnum):
    """What a person may do: read, or also act (retry, cancel, edit fingerprints)."""

    VIEWER = "viewer"
    OPERATOR = "operator"


NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]


class UserEntry(BaseModel):
    """One person of the users file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    role: Role
    password_hash: str = Field(pattern=r"^\$argon2(id|i|d)\$")


class UsersFile(BaseModel):
    """The whole users file."""

    model_config = ConfigDict(extra="forbid")

    users: list[UserEntry] = []


@dataclass(frozen=True)
class User:
    """A person as a request knows them; `stamp` names their current password (a digest
    of its hash), so that a session opened with an older one is refused."""

    name: str
    role: Role
    stamp: str


def _user(entry: UserEntry) -> User:
    return User(entry.name, entry.role, hashlib.sha256(entry.password_hash.encode()).hexdigest())


class Users:
    """The users file, read again when it changes. A file that does not parse logs one
    ERROR line (once per change) and lets nobody in until it is fixed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._entries: dict[str, UserEntry] = {}

    def get(self, name: str) -> User | None:
        """The person of that name, as the file says now."""
        entry = self._current().get(name)
        return None if entry is None else _user(entry)

    def verify(self, name: str, password: str) -> User | None:
        """The person, if the password is theirs."""
        entry = self._current().get(name)
        try:
            _hasher.verify(entry.password_hash if entry else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return None if entry is None else _user(entry)

    @property
    def configured(self) -> bool:
        """Whether anyone can log in at all."""
        return bool(self._current())

    def _current(self) -> dict[str, UserEntry]:
        with self._lock:
            try:
                stat = self.path.stat()
            except OSError:
                self._seen, self._entries = None, {}
                return self._entries
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if self._seen != seen:
                self._seen = seen
                self._entries = self._load()
            return self._entries

    def _load(self) -> dict[str, UserEntry]:
        try:
            parsed = read_users(self.path)
        except ConfigError as exc:
            logger.error("%s; nobody can log in to the console until it is fixed", exc)
            return {}
        return {entry.name: entry for entry in parsed.users}


def read_users(path: Path) -> UsersFile:
    """The users file, or ConfigError saying what is wrong with it (never a hash)."""
    try:
        parsed = UsersFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return UsersFile()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"users file {path}: cannot be read as JSON: {exc}") from exc
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"users file {path}: {where}") from None
    names = [entry.name for entry in parsed.users]
    if len(names) != len(set(names)):
        raise ConfigError(f"users file {path}: a name appears twice")
    return parsed


def set_user(path: Path, name: str, role: Role, password: str) -> bool:
    """Add a person or replace their role and password; True when they were new."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if not NAME.fullmatch(name):
        raise ConfigError(f"{name!r} is not a user name: 1 to 64 letters, digits and . _ @ -")
    entry = UserEntry(name=name, role=role, password_hash=_hasher.hash(password))
    current = read_users(path)
    others = [user for user in current.users if user.name != name]
    _write(path, UsersFile(users=[*others, entry]))
    return len(others) == len(current.users)


def remove_user(path: Path, name: str) -> bool:
    """Remove a person; False when there was nobody of that name."""
    current = read_users(path)
    others = [user for user in current.users if user.name != name]
    if len(others) == len(current.users):
        return False
    _write(path, UsersFile(users=others))
    return True


def _write(path: Path, users: UsersFile) -> None:
    """Replace the file at once (a temporary file renamed over it), readable by its owner."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".users-", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"users file {path}: cannot be written: {exc.strerror}") from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(users.model_dump_json(indent=2) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"users file {path}: cannot be written: {exc.strerror}") from exc
