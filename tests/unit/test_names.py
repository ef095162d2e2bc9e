"""Name and value validation."""

from __future__ import annotations

import pytest

from control.names import app_name_problem, env_name_problem, parse_memory, parse_route


@pytest.mark.parametrize("name", ["a", "hello-python", "x1", "a" * 63, "0day"])
def test_good_app_names(name: str) -> None:
    assert app_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("Hello", "DNS label"),
        ("under_score", "DNS label"),
        ("-lead", "DNS label"),
        ("trail-", "DNS label"),
        ("a" * 64, "longer than 63"),
        ("dot.ted", "DNS label"),
        ("sp ace", "DNS label"),
        ("api", "reserved"),
        ("ünï", "DNS label"),
    ],
)
def test_bad_app_names_say_why(name: str, why: str) -> None:
    problem = app_name_problem(name)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize(
    ("key", "ok"),
    [("A", True), ("_x1", True), ("1A", False), ("A-B", False), ("PORT", False), ("", False)],
)
def test_env_names(key: str, ok: bool) -> None:
    assert (env_name_problem(key) is None) is ok


@pytest.mark.parametrize(
    ("text", "mib"), [("256M", 256), ("1G", 1024), ("512", 512), ("64MB", 64), ("2gb", 2048)]
)
def test_memory_sizes(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["lots", "1T", "-5M", "8M", ""])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(ValueError, match=f"memory {text!r} "):
        parse_memory(text)


@pytest.mark.parametrize(
    ("text", "host", "path"),
    [
        ("Shop.Example.com", "shop.example.com", "/"),
        ("a.test/api", "a.test", "/api"),
        ("a.test/api/", "a.test", "/api"),
        ("a.test/", "a.test", "/"),
    ],
)
def test_routes_parse(text: str, host: str, path: str) -> None:
    assert parse_route(text) == (host, path)


@pytest.mark.parametrize(
    "text", ["", "bad_host.test", "a.test/../etc", "a.test/with space", "-a.test", "a..test"]
)
def test_bad_routes_say_why(text: str) -> None:
    with pytest.raises(ValueError, match="route"):
        parse_route(text)
