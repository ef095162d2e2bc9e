"""Secrets at rest in the control plane's home: the keyring, sealed values, file modes.

Rules this module keeps:
* Config var values never reach the database in the clear. The store seals every
  column that can carry them (an app's env, each release's env snapshot, work items
  and task payloads, which copy env to nodes) with AES-256-GCM; `cryptography`'s AESGCM
  is the standard implementation, and GCM authenticates, so a wrong key or a changed
  byte is an error, never garbage served as config.
* The keys live outside the database, in a keyring file: `<home>/keyring.json` by
  default (0600, made on the first start of an empty database), or a file the operator
  names (`--keyring`, FOUNDRY_KEYRING), e.g. on a secrets mount. A keyring holds several
  labelled keys and names one current; new values are sealed with the current key.
* A sealed value names its key: `fdy1:<label>:<base64(nonce || ciphertext+tag)>`. The
  column it belongs to is bound in as associated data, so a value copied into another
  column does not open.
* Rotation adds a new current key, reseals value by value (each row in its own
  transaction, so it can stop anywhere and be run again), and drops a key only once no
  value names it. Another process (a running control plane) rereads the keyring when
  the file changes on disk or a value names a key it does not know.
* Nothing in the control plane's home is readable by group or others: the home and its
  directories are 0700, its files 0600; a home found looser is tightened at start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from control.errors import FoundryError

PREFIX = "fdy1:"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce; random per value (2^-32 collision bound
#                         is reached only after ~2^32 values under one key)
LABEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
KEYRING_ENV = "FOUNDRY_KEYRING"


class VaultError(FoundryError):
    """A keyring that cannot be used or a sealed value that does not open."""


@dataclass(frozen=True)
class Keys:
    """The labelled keys of a keyring and the label new values are sealed with."""

    current: str
    keys: Mapping[str, bytes]


# --- pure: keyring text and sealed values ----------------------------------------------
def parse_keyring(text: str, where: str) -> Keys:
    """Keys from a keyring file's JSON text; VaultError says what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError:
        raise VaultError(f"keyring {where} is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
        raise VaultError(f'keyring {where} must be {{"current": LABEL, "keys": {{LABEL: KEY}}}}')
    keys: dict[str, bytes] = {}
    for label, encoded in data["keys"].items():
        if not LABEL.match(label):
            raise VaultError(f"keyring {where}: key label {label!r} must match {LABEL.pattern}")
        try:
            key = base64.b64decode(str(encoded), validate=True)
        except (binascii.Error, ValueError):
            raise VaultError(f"keyring {where}: key {label!r} is not base64") from None
        if len(key) != KEY_BYTES:
            raise VaultError(
                f"keyring {where}: key {label!r} must be {KEY_BYTES} bytes (base64), not {len(key)}"
            )
        keys[label] = key
    current = data.get("current")
    if current not in keys:
        raise VaultError(f"keyring {where}: its current key {current!r} is not among its keys")
    return Keys(str(current), keys)


def render_keyring(keys: Keys) -> str:
    return (
        json.dumps(
            {
                "current": keys.current,
                "keys": {
                    label: base64.b64encode(key).decode()
                    for label, key in sorted(keys.keys.items())
                },
            },
            indent=2,
        )
        + "\n"
    )


def new_label(now: float, taken: Iterable[str], salt: str) -> str:
    """A label that says when the key was made and is not already taken."""
    label = time.strftime("k%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{salt}"
    if label in set(taken):
        raise VaultError(f"key label {label} is already in the keyring; run again")
    return label


def sealed_label(value: str) -> str | None:
    """The label a sealed value names, or None when it is not sealed."""
    if not value.startswith(PREFIX):
        return None
    label, sep, _ = value[len(PREFIX) :].partition(":")
    return label if sep else None


def seal(keys: Keys, plaintext: str, context: str, nonce: bytes) -> str:
    """Encrypt `plaintext` for column `context` under the current key."""
    box = _aead(keys.keys[keys.current]).encrypt(nonce, plaintext.encode(), context.encode())
    return f"{PREFIX}{keys.current}:{base64.b64encode(nonce + box).decode()}"


def unseal(keys: Keys, value: str, context: str) -> str:
    """Decrypt a sealed value of column `context`; VaultError unless it opens intact."""
    label = sealed_label(value)
    if label is None:
        raise VaultError(f"a value in {context} is not sealed")
    if label not in keys.keys:
        raise VaultError(
            f"a value in {context} is sealed with key {label!r}, which the keyring does not hold"
        )
    try:
        # not validate=True: its regex costs more than the decryption, and GCM's tag
        # already refuses any changed byte
        raw = base64.b64decode(value[len(PREFIX) + len(label) + 1 :])
        text = _aead(keys.keys[label]).decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()
        )
    except (binascii.Error, ValueError, InvalidTag):
        raise VaultError(
            f"a value in {context} does not open with key {label!r}: the key is "
            "wrong or the value was altered"
        ) from None
    return text.decode()


@functools.lru_cache(maxsize=16)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


# --- the keyring file -------------------------------------------------------------------
def keyring_path(home: Path, given: Path | None = None) -> Path:
    """Where the keyring is: the operator's choice, else beside the database."""
    named = given or os.environ.get(KEYRING_ENV)
    return Path(named).expanduser() if named else home / "keyring.json"


class Keyring:
    """A keyring file, reread whenever it changes on disk."""

    def __init__(self, path: Path, keys: Keys, seen: tuple[int, int, int]) -> None:
        self.path = path
        self.keys = keys
        self._seen = seen

    @classmethod
    def open(cls, path: Path, labels_in_use: Iterable[str]) -> Keyring:
        """Load the keyring; make a new one only when no stored value needs an old one."""
        needed = sorted(set(labels_in_use))
        if not path.exists():
            if needed:
                raise VaultError(
                    f"the database holds config vars sealed with key(s) "
                    f"{', '.join(needed)}, but the keyring {path} is missing: "
                    f"restore it, or name it with --keyring / {KEYRING_ENV}"
                )
            label = new_label(time.time(), (), secrets.token_hex(2))
            write_keyring(path, Keys(label, {label: AESGCM.generate_key(KEY_BYTES * 8)}))
        ring = cls(path, *_read(path))
        missing = [label for label in needed if label not in ring.keys.keys]
        if missing:
            raise VaultError(
                f"the database holds config vars sealed with key(s) "
                f"{', '.join(missing)}, which the keyring {path} does not hold"
            )
        return ring

    def refresh(self) -> None:
        """Reread the file if it changed (another process rotated keys)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return  # keep the keys in memory; the next start reports the missing file
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._seen:
            self.keys, self._seen = _read(self.path)

    def seal(self, plaintext: str, context: str) -> str:
        self.refresh()
        return seal(self.keys, plaintext, context, os.urandom(NONCE_BYTES))

    def unseal(self, value: str, context: str) -> str:
        if sealed_label(value) not in self.keys.keys:
            self.refresh()
        return unseal(self.keys, value, context)

    def add_current(self) -> str:
        """Add a new key and make it current; returns its label."""
        self.refresh()
        label = new_label(time.time(), self.keys.keys, secrets.token_hex(2))
        self._write(Keys(label, {**self.keys.keys, label: AESGCM.generate_key(KEY_BYTES * 8)}))
        return label

    def drop(self, labels: Iterable[str]) -> None:
        """Remove keys (never the current one)."""
        self.refresh()
        doomed = set(labels) - {self.keys.current}
        self._write(
            Keys(self.keys.current, {k: v for k, v in self.keys.keys.items() if k not in doomed})
        )

    def _write(self, keys: Keys) -> None:
        write_keyring(self.path, keys)
        self.keys, self._seen = _read(self.path)


def _read(path: Path) -> tuple[Keys, tuple[int, int, int]]:
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except OSError as e:
        raise VaultError(f"cannot read the keyring {path}: {e.strerror}") from None
    return parse_keyring(text, str(path)), (st.st_ino, st.st_mtime_ns, st.st_size)


def write_keyring(path: Path, keys: Keys) -> None:
    """Replace the keyring file atomically, 0600 from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keyring-")
        with os.fdopen(fd, "w") as f:
            f.write(render_keyring(keys))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError as e:
        raise VaultError(f"cannot write the keyring {path}: {e.strerror}") from None


# --- file modes -----------------------------------------------------------------------
def private_mode(mode: int) -> int | None:
    """The mode without group/other bits, or None when it has none to remove."""
    return stat.S_IMODE(mode) & ~0o077 if mode & 0o077 else None


def secure_home(home: Path) -> int:
    """Make `home` 0700 and strip group/other access from everything under it (links are
    left alone: chmod would follow them out). Returns how many paths were tightened."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tightened = 0
    for root, dirs, files in os.walk(home):
        for name in [".", *dirs, *files]:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or (name == "." and root != str(home)):
                continue
            mode = private_mode(st.st_mode)
            if mode is not None:
                os.chmod(path, mode)
                tightened += 1
    return tightened


def create_private(path: Path) -> None:
    """Create an empty file 0600 if there is none (SQLite gives its WAL and SHM files the
    database file's mode, so this keeps all three private)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
