"""The request path's normal form, which routes match and backends are sent
(`edge.routes.routable_target`): tables of raw targets, and properties of the form."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.routes import (
    Backend,
    PathError,
    Route,
    RouteTable,
    normalize_path,
    normalize_prefix,
    routable_target,
)


@pytest.mark.parametrize(
    ("target", "path", "forwarded"),
    [
        (b"/api/x?q=1", b"/api/x", b"/api/x?q=1"),  # already normal: sent as it came
        (b"/api/../admin", b"/admin", b"/admin"),
        (b"/api/%2e%2e/admin", b"/admin", b"/admin"),
        (b"/api/%2E%2e/admin", b"/admin", b"/admin"),
        (b"/api/.%2E/admin", b"/admin", b"/admin"),
        (b"/api/%2e/x", b"/api/x", b"/api/x"),
        (b"/api/x/../../admin", b"/admin", b"/admin"),
        (b"/api/./x/.", b"/api/x/", b"/api/x/"),
        (b"/api/x/..", b"/api/", b"/api/"),
        (b"/../../etc", b"/etc", b"/etc"),  # never above the root
        (b"/..", b"/", b"/"),
        (b"//api//x", b"/api/x", b"/api/x"),  # runs of slashes merged
        (b"/api//../admin", b"/admin", b"/admin"),  # merged first, as a merging backend reads it
        (b"/%61pi/x", b"/api/x", b"/api/x"),  # unreserved escapes decoded
        (b"/a%7e%5F%2D", b"/a~_-", b"/a~_-"),
        (b"/a%2fb", b"/a%2Fb", b"/a%2Fb"),  # %2F stays data, escapes upper-cased
        (b"/api%2f..%2fadmin", b"/api%2F..%2Fadmin", b"/api%2F..%2Fadmin"),  # one segment
        (b"/caf%c3%a9", b"/caf%C3%A9", b"/caf%C3%A9"),
        (b"/%252e%252e/x", b"/%252e%252e/x", b"/%252e%252e/x"),  # decoded once, never twice
        (b"/x..y/.a/..b", b"/x..y/.a/..b", b"/x..y/.a/..b"),  # not dot segments
        (b"/.well-known/acme", b"/.well-known/acme", b"/.well-known/acme"),
        (b"/a/..;/b", b"/a/..;/b", b"/a/..;/b"),  # `;` is segment text (RFC 3986)
        (b"/api/../admin?next=/../x&y=%2e", b"/admin", b"/admin?next=/../x&y=%2e"),  # query kept
        (b"*", b"*", b"*"),  # OPTIONS *
    ],
)
def test_targets_route_and_forward_in_normal_form(
    target: bytes, path: bytes, forwarded: bytes
) -> None:
    assert routable_target(target) == (path, forwarded)


@pytest.mark.parametrize(
    "target",
    [
        b"/api\\..\\admin",  # backslash: no URI holds one, some servers read it as "/"
        b"/api/x#/../../admin",  # a fragment is never sent
        b"/api?x#y",
        b"/a%zz",  # malformed escapes
        b"/a%4",
        b"/a%",
        b"/a%%32e",
    ],
)
def test_refused_targets(target: bytes) -> None:
    with pytest.raises(PathError):
        routable_target(target)


SEGMENTS = [
    "api",
    "API",
    "admin",
    "",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2E",
    "%2f",
    "%41",
    "a%7e",
    "%c3%a9",
    "x..",
    ";",
    "..;",
]
paths = st.lists(st.sampled_from(SEGMENTS), max_size=7).map(lambda s: b"/" + "/".join(s).encode())
_LOWER_ESCAPE = re.compile(rb"%[0-9A-F]?[a-f]")
_UNRESERVED_ESCAPE = re.compile(rb"%(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2D|2E|5F|7E)")


@given(paths)
def test_the_normal_form_is_a_fixed_point_of_the_usual_server_clean_ups(path: bytes) -> None:
    normal = normalize_path(path)
    assert normalize_path(normal) == normal
    assert normal.startswith(b"/")
    assert b"//" not in normal
    assert not {b".", b".."} & set(normal.split(b"/"))
    assert not _LOWER_ESCAPE.search(normal)
    assert not _UNRESERVED_ESCAPE.search(normal)


ROUTES = RouteTable(
    routes=(
        Route("h", "/", "root", (Backend("127.0.0.1:1", "r"),)),
        Route("h", "/api", "api", (Backend("127.0.0.1:2", "a"),)),
    )
)


@pytest.mark.parametrize(
    ("target", "app"),
    [
        (b"/api", "api"),
        (b"/api/x", "api"),
        (b"/api/", "api"),
        (b"/apix", "root"),  # prefixes end on a segment boundary
        (b"/API/x", "root"),  # paths are case-sensitive
        (b"/api/../admin", "root"),
        (b"/api/%2e%2e/admin", "root"),
        (b"/api/%2e%2e", "root"),
        (b"/api/x/../../admin", "root"),
        (b"/admin/../api/x", "api"),
        (b"//api/x", "api"),
        (b"/%61pi/x", "api"),
        (b"/api%2fx", "root"),
    ],
)
def test_routes_match_the_normal_path(target: bytes, app: str) -> None:
    path, _ = routable_target(target)
    route = ROUTES.lookup("h", path.decode("latin-1"))
    assert route is not None
    assert route.app == app


@given(paths)
def test_a_path_reaches_the_api_app_only_if_its_normal_form_is_under_it(path: bytes) -> None:
    normal, _ = routable_target(path)
    route = ROUTES.lookup("h", normal.decode("latin-1"))
    assert route is not None
    assert (route.app == "api") == (normal.split(b"/")[1] == b"api")


@pytest.mark.parametrize(
    ("given_path", "stored"),
    [
        ("/api", "/api"),
        ("api/", "/api"),
        ("", "/"),
        ("/a//b/", "/a/b"),
        ("/%7euser", "/~user"),
        ("/a%2fb", "/a%2Fb"),
        # dot segments (which would turn `/x/%2e%2e` into `/`) and bad escapes: kept as
        # given, so they match no request
        ("/x/%2e%2e", "/x/%2e%2e"),
        ("/x/..", "/x/.."),
        ("/%zz", "/%zz"),
    ],
)
def test_route_prefixes_are_stored_in_the_same_form(given_path: str, stored: str) -> None:
    assert normalize_prefix(given_path) == stored


def test_a_route_with_dot_segments_matches_nothing() -> None:
    table = RouteTable.from_json(
        {
            "routes": [
                {"host": "h", "path": "/x/%2e%2e", "app": "sneaky"},
                {"host": "h", "path": "/", "app": "root"},
            ]
        }
    )
    for target in (b"/", b"/x/%2e%2e", b"/x/..", b"/x/%2e%2e/y", b"/x"):
        route = table.lookup("h", routable_target(target)[0].decode("latin-1"))
        assert route is not None, target
        assert route.app == "root", target
