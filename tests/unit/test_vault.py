"""Sealing config values and reading keyrings (control/vault.py): pure functions."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from control.vault import (
    Keyring,
    Keys,
    VaultError,
    parse_keyring,
    private_mode,
    render_keyring,
    seal,
    sealed_label,
    secure_home,
    unseal,
)

A = Keys("a", {"a": b"\x01" * 32})
AB = Keys("b", {"a": b"\x01" * 32, "b": b"\x02" * 32})
NONCE = b"\x00" * 12


def test_a_sealed_value_names_its_key_hides_the_text_and_opens_again() -> None:
    sealed = seal(A, '{"SECRET": "hunter2"}', "apps.env", NONCE)
    assert sealed.startswith("fdy1:a:")
    assert "hunter2" not in sealed
    assert sealed_label(sealed) == "a"
    assert unseal(A, sealed, "apps.env") == '{"SECRET": "hunter2"}'


def test_values_under_an_old_key_still_open_after_a_new_key_becomes_current() -> None:
    old = seal(A, "x", "apps.env", NONCE)
    assert unseal(AB, old, "apps.env") == "x"
    assert sealed_label(seal(AB, "x", "apps.env", NONCE)) == "b"


@pytest.mark.parametrize(
    ("keys", "value", "context", "why"),
    [
        (Keys("a", {"a": b"\x09" * 32}), None, "apps.env", "wrong"),  # same label, other key
        (Keys("c", {"c": b"\x01" * 32}), None, "apps.env", "does not hold"),  # label unknown
        (A, None, "work.payload", "wrong"),  # moved to another column
        (A, "tamper", "apps.env", "altered"),
        (A, "fdy1:a:!!!", "apps.env", "does not open"),
        (A, '{"SECRET": "x"}', "apps.env", "not sealed"),
    ],
)
def test_a_value_that_does_not_open_is_an_error_never_text(
    keys: Keys, value: str | None, context: str, why: str
) -> None:
    sealed = seal(A, '{"SECRET": "x"}', "apps.env", NONCE)
    if value == "tamper":
        raw = bytearray(base64.b64decode(sealed.split(":")[2]))
        raw[-1] ^= 1
        value = "fdy1:a:" + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(VaultError, match=why):
        unseal(keys, value or sealed, context)


def test_keyring_text_round_trips() -> None:
    assert parse_keyring(render_keyring(AB), "k") == AB


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not JSON"),
        ("[]", "must be"),
        ('{"current": "a", "keys": {"a": "AAAA"}}', "32 bytes"),
        ('{"current": "a", "keys": {"a": "%%%"}}', "not base64"),
        (
            '{"current": "b", "keys": {"a": "' + base64.b64encode(b"1" * 32).decode() + '"}}',
            "not among its keys",
        ),
        (
            '{"current": "a:b", "keys": {"a:b": "' + base64.b64encode(b"1" * 32).decode() + '"}}',
            "must match",
        ),
    ],
)
def test_a_bad_keyring_is_one_clear_error(text: str, why: str) -> None:
    with pytest.raises(VaultError, match=why):
        parse_keyring(text, "/x/keyring.json")


def test_a_missing_keyring_is_made_only_when_nothing_needs_an_old_key(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match=r"keyring .* is missing"):
        Keyring.open(tmp_path / "keyring.json", ["a"])
    assert not (tmp_path / "keyring.json").exists()
    ring = Keyring.open(tmp_path / "keyring.json", [])
    assert stat.S_IMODE(os.stat(ring.path).st_mode) == 0o600
    assert list(json.loads(ring.path.read_text())["keys"]) == [ring.keys.current]


def test_another_process_rotating_the_keyring_is_seen(tmp_path: Path) -> None:
    mine = Keyring.open(tmp_path / "k.json", [])
    theirs = Keyring.open(tmp_path / "k.json", [])
    old = mine.seal("v", "apps.env")
    label = theirs.add_current()
    new = theirs.seal("w", "apps.env")
    assert mine.unseal(new, "apps.env") == "w"  # unknown label: reread the file
    assert sealed_label(mine.seal("x", "apps.env")) == label
    theirs.drop([sealed_label(old) or ""])
    mine.seal("y", "apps.env")  # every seal checks the file first
    with pytest.raises(VaultError, match="does not hold"):
        mine.unseal(old, "apps.env")


def test_private_mode_strips_group_and_other_only() -> None:
    assert private_mode(0o100644) == 0o600
    assert private_mode(0o40755) == 0o700
    assert private_mode(0o100600) is None


def test_secure_home_tightens_everything_but_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("x")
    outside.chmod(0o644)
    home = tmp_path / "home"
    (home / "blobs").mkdir(parents=True)
    (home / "blobs" / "b").write_text("x")
    (home / "link").symlink_to(outside)
    for p, mode in ((home, 0o755), (home / "blobs", 0o755), (home / "blobs" / "b", 0o644)):
        p.chmod(mode)
    assert secure_home(home) == 3
    assert [
        stat.S_IMODE(p.stat().st_mode) for p in (home, home / "blobs", home / "blobs" / "b")
    ] == [0o700, 0o700, 0o600]
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
    assert secure_home(home) == 0
