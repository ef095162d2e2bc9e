"""Route table parsing, lookup and balancing (pure, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.balance import Balancer
from edge.routes import (
    Backend,
    Route,
    RouteOptions,
    RouteTable,
    RouteTableError,
    normalize_host,
    path_has_prefix,
    split_address,
)

B1 = Backend("127.0.0.1:1001", "i-1")
B2 = Backend("127.0.0.1:1002", "i-2")
B3 = Backend("127.0.0.1:1003", "i-3")


def table(*routes: Route, etag: str = "e1") -> RouteTable:
    return RouteTable(routes=routes, etag=etag)


def test_from_json_builds_routes_with_backends() -> None:
    data = {
        "etag": "abc",
        "routes": [
            {
                "host": "Hello.localhost",
                "path": "/",
                "app": "hello",
                "backends": [{"address": "127.0.0.1:40123", "instance": "i-1"}],
            }
        ],
    }
    parsed = RouteTable.from_json(data)
    assert parsed.etag == "abc"
    assert parsed.routes == (
        Route("hello.localhost", "/", "hello", (Backend("127.0.0.1:40123", "i-1"),)),
    )


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"routes": "nope"},
        {"routes": [{"path": "/", "app": "a"}]},
        {"routes": [{"host": "a", "app": "a", "backends": [{"address": "no-port"}]}]},
        {"routes": [{"host": "", "app": "a"}]},
        {"routes": [None]},
    ],
)
def test_from_json_refuses_malformed_data(data: dict[str, object]) -> None:
    with pytest.raises(RouteTableError):
        RouteTable.from_json(data)


def test_missing_path_and_backends_default_to_root_and_none() -> None:
    parsed = RouteTable.from_json({"routes": [{"host": "a.localhost", "app": "a"}]})
    assert parsed.routes == (Route("a.localhost", "/", "a", ()),)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("hello.localhost", "hello"),
        ("HELLO.LocalHost", "hello"),
        ("hello.localhost:8080", "hello"),
        ("hello.localhost.", "hello"),
        ("other.localhost", None),
        ("hello.localhost.evil", None),
    ],
)
def test_lookup_by_host_ignores_case_and_port(host: str, expected: str | None) -> None:
    routes = table(Route("hello.localhost", "/", "hello", (B1,)))
    found = routes.lookup(host, "/")
    assert (found.app if found else None) == expected


@pytest.mark.parametrize(
    ("path", "app"),
    [
        ("/", "root"),
        ("/ab", "root"),
        ("/a", "a"),
        ("/a/", "a"),
        ("/a/x", "a"),
        ("/a/b", "ab"),
        ("/a/b/c", "ab"),
        ("/a/bc", "a"),
    ],
)
def test_longest_path_prefix_wins_on_segment_boundaries(path: str, app: str) -> None:
    routes = RouteTable.from_json(
        {
            "routes": [
                {"host": "h", "path": "/", "app": "root"},
                {"host": "h", "path": "/a/b/", "app": "ab"},
                {"host": "h", "path": "/a", "app": "a"},
            ]
        }
    )
    found = routes.lookup("h", path)
    assert found is not None
    assert found.app == app


def test_host_without_a_root_route_misses_other_paths() -> None:
    routes = table(Route("h", "/api", "api", (B1,)))
    assert routes.lookup("h", "/") is None
    assert routes.lookup("h", "/apix") is None


def test_route_without_backends_is_still_found() -> None:
    routes = table(Route("h", "/", "idle", ()))
    found = routes.lookup("h", "/")
    assert found is not None
    assert found.backends == ()


def test_ipv6_host_header_keeps_brackets() -> None:
    assert normalize_host("[::1]:8080") == "[::1]"


def test_split_address_handles_ipv6_and_refuses_missing_port() -> None:
    assert split_address("[::1]:80") == ("::1", 80)
    assert B1.host == "127.0.0.1"
    assert B1.port == 1001
    with pytest.raises(ValueError, match="is not host:port"):
        split_address("localhost")


def test_balancer_rotates_round_robin() -> None:
    route = Route("h", "/", "a", (B1, B2, B3))
    balancer = Balancer()
    firsts = [balancer.candidates(route, 1)[0] for _ in range(6)]
    assert firsts == [B1, B2, B3, B1, B2, B3]


def test_balancer_candidates_are_distinct_and_limited() -> None:
    balancer = Balancer()
    route = Route("h", "/", "a", (B1, B2, B3))
    balancer.candidates(route, 3)
    assert balancer.candidates(route, 3) == [B2, B3, B1]
    assert balancer.candidates(Route("h", "/", "a", (B1,)), 3) == [B1]
    assert balancer.candidates(Route("x", "/", "a", ()), 3) == []


def test_balancer_keeps_its_turn_across_table_refreshes() -> None:
    balancer = Balancer()
    old = Route("h", "/", "a", (B1, B2))
    assert balancer.candidates(old, 1) == [B1]
    refreshed = Route("h", "/", "a", (B1, B2))  # an equal route from a new table
    balancer.forget_missing(table(refreshed))
    assert balancer.candidates(refreshed, 1) == [B2]


def test_balancer_forgets_routes_gone_from_the_table() -> None:
    balancer = Balancer()
    route = Route("h", "/", "a", (B1, B2))
    balancer.candidates(route, 1)
    balancer.forget_missing(table())
    assert balancer.candidates(route, 1) == [B1]


@given(
    count=st.integers(min_value=1, max_value=6),
    rounds=st.integers(min_value=1, max_value=5),
)
def test_balancer_spreads_evenly(count: int, rounds: int) -> None:
    backends = tuple(Backend(f"127.0.0.1:{2000 + i}", f"i-{i}") for i in range(count))
    route = Route("h", "/", "a", backends)
    balancer = Balancer()
    picks = [balancer.candidates(route, 1)[0] for _ in range(count * rounds)]
    assert all(picks.count(b) == rounds for b in backends)


@given(segments=st.lists(st.text("abc", min_size=1, max_size=3), max_size=4))
def test_a_prefix_matches_itself_and_its_subpaths(segments: list[str]) -> None:
    prefix = "/" + "/".join(segments) if segments else "/"
    assert path_has_prefix(prefix, prefix)
    assert path_has_prefix(prefix.rstrip("/") + "/x", prefix)
    if prefix != "/":
        assert not path_has_prefix(prefix + "z", prefix)


def test_route_options_default_when_absent() -> None:
    data = {"routes": [{"host": "a.localhost", "app": "a", "backends": []}]}
    (route,) = RouteTable.from_json(data).routes
    assert route.options == RouteOptions("round-robin", 900.0, True)


def test_route_options_are_read() -> None:
    options = {"balance": "least-in-flight", "timeout": 5, "sticky": False, "later": 1}
    data = {"routes": [{"host": "a", "app": "a", "backends": [], "options": options}]}
    (route,) = RouteTable.from_json(data).routes
    assert route.options == RouteOptions("least-in-flight", 5.0, False)


@pytest.mark.parametrize(
    "options", [{"balance": "random"}, {"timeout": -1}, {"timeout": "x"}, {"sticky": "yes"}]
)
def test_bad_route_options_are_refused(options: dict[str, object]) -> None:
    data = {"routes": [{"host": "a", "app": "a", "backends": [], "options": options}]}
    with pytest.raises(RouteTableError):
        RouteTable.from_json(data)


LEAST = RouteOptions(balance="least-in-flight")


def test_least_in_flight_prefers_the_idlest_backend() -> None:
    route = Route("h", "/", "a", (B1, B2, B3), LEAST)
    balancer = Balancer()
    balancer.started(B1)
    balancer.started(B1)
    balancer.started(B2)
    assert balancer.candidates(route, 3) == [B3, B2, B1]
    balancer.finished(B1)
    balancer.finished(B1)
    assert balancer.in_flight(B1) == 0
    assert balancer.candidates(route, 3) == [B3, B1, B2]  # ties kept in rotation order


@given(st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=30))
def test_least_in_flight_never_picks_a_busier_backend(starts: list[int]) -> None:
    backends = (B1, B2, B3)
    route = Route("h", "/", "a", backends, LEAST)
    balancer = Balancer()
    for index in starts:
        balancer.started(backends[index])
    first = balancer.candidates(route, 1)[0]
    assert balancer.in_flight(first) == min(balancer.in_flight(b) for b in backends)


def test_failed_backend_goes_last_until_its_ejection_ends() -> None:
    route = Route("h", "/", "a", (B1, B2, B3))
    balancer = Balancer(eject_seconds=10)
    balancer.failed(B1, now=100.0)
    assert balancer.candidates(route, 3, now=105.0) == [B2, B3, B1]
    assert balancer.candidates(route, 3, now=105.0) == [B2, B3, B1]
    assert balancer.candidates(route, 3, now=110.0) == [B3, B1, B2]


def test_pinned_instance_goes_first_unless_ejected_or_not_sticky() -> None:
    route = Route("h", "/", "a", (B1, B2, B3))
    balancer = Balancer()
    assert balancer.candidates(route, 2, pinned="i-3") == [B3, B1]
    assert balancer.candidates(route, 2, pinned="i-9") == [B2, B3]  # gone: balance
    balancer.failed(B3, now=0.0)
    assert balancer.candidates(route, 1, now=1.0, pinned="i-3") == [B1]
    loose = Route("h", "/", "a", (B1, B2, B3), RouteOptions(sticky=False))
    assert balancer.candidates(loose, 1, pinned="i-3") == [B1]
