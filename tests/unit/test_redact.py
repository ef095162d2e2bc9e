"""Credentials in buildpack URLs never reach a build log or an error."""

from __future__ import annotations

import pytest

from node.packs import redact_urls


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:s3cret@git.example/pack.git", "https://***@git.example/pack.git"),
        ("https://ghp_token@git.example:8443/p.git#v1", "https://***@git.example:8443/p.git#v1"),
        ("git://a:b@c/d and http://e@f/g", "git://***@c/d and http://***@f/g"),
        (
            "could not clone buildpack https://u:p@h/x: fatal: 'https://u:p@h/x/' not found",
            "could not clone buildpack https://***@h/x: fatal: 'https://***@h/x/' not found",
        ),
        ("https://odd@user:p@ss@h/x", "https://***@h/x"),
    ],
)
def test_userinfo_is_replaced(text: str, shown: str) -> None:
    assert redact_urls(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "https://git.example/pack.git",
        "https://h/path@with-at",
        "http://h/p?q=a@b",
        "python",
        "blob:" + "a" * 64,
        "mail me at someone@example.com",
    ],
)
def test_urls_without_credentials_are_unchanged(text: str) -> None:
    assert redact_urls(text) == text
