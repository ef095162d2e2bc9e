"""control.policy: who owns a host, who may claim it, and what a token sees of the
routing table (tables of inputs and answers; no servers)."""

from __future__ import annotations

import pytest

from control.policy import (
    MappedRoute,
    host_owner,
    route_claim_problem,
    scoped_table,
    sees_infrastructure,
)

D = "localhost"
ALICE_SHOP = MappedRoute("shop.test", "/", "alice", 10.0)
MALLORY_EARLY = MappedRoute("early.test", "/m", "mallory", 5.0)
ALICE_LATE = MappedRoute("early.test", "/", "alice", 9.0)
SQUAT = MappedRoute("bob.localhost", "/x", "mallory", 1.0)  # mapped before bob existed
RESERVED = "host {} is reserved for another owner"


@pytest.mark.parametrize(
    ("host", "mapped", "scope", "problem"),
    [
        # an app's default host is its own, existing or not
        ("alice.localhost", [], frozenset({"mallory"}), RESERVED.format("alice.localhost")),
        ("alice.localhost", [], frozenset({"alice"}), None),
        ("alice.localhost", [], frozenset({"alice", "mallory"}), None),
        ("alice.localhost", [], None, None),  # admin
        ("bob.localhost", [SQUAT], frozenset({"mallory"}), RESERVED.format("bob.localhost")),
        # other hosts: the first claim wins, any path under it is refused to others
        ("shop.test", [], frozenset({"mallory"}), None),
        ("shop.test", [ALICE_SHOP], frozenset({"mallory"}), RESERVED.format("shop.test")),
        ("shop.test", [ALICE_SHOP], frozenset({"alice"}), None),
        ("shop.test", [ALICE_SHOP], None, None),
        (
            "early.test",
            [ALICE_LATE, MALLORY_EARLY],
            frozenset({"alice"}),
            RESERVED.format("early.test"),
        ),
        ("early.test", [ALICE_LATE, MALLORY_EARLY], frozenset({"mallory"}), None),
        # a deeper name is another host; other hosts' claims do not count
        ("x.alice.localhost", [], frozenset({"mallory"}), None),
        ("other.test", [ALICE_SHOP], frozenset({"mallory"}), None),
    ],
)
def test_route_claims(
    host: str, mapped: list[MappedRoute], scope: frozenset[str] | None, problem: str | None
) -> None:
    assert route_claim_problem(host, D, mapped, scope) == problem


def test_a_host_is_owned_by_its_earliest_route_ties_broken_by_path() -> None:
    same_time = [MappedRoute("h.test", "/b", "bee", 1.0), MappedRoute("h.test", "/a", "ay", 1.0)]
    assert host_owner("h.test", D, same_time) == "ay"
    assert host_owner("h.test", D, []) is None
    assert host_owner("localhost", D, []) is None  # the bare domain is claimable


@pytest.mark.parametrize(
    ("kind", "scope", "sees"),
    [
        ("admin", None, True),
        ("edge", None, True),
        ("read", None, True),
        ("read", frozenset({"a"}), False),
        ("deploy", None, False),
        ("deploy", frozenset({"a"}), False),
    ],
)
def test_who_sees_infrastructure(kind: str, scope: frozenset[str] | None, sees: bool) -> None:
    assert sees_infrastructure(kind, scope) is sees


def table(address_b: str = "10.0.0.2:5001") -> dict[str, object]:
    return {
        "etag": "full",
        "routes": [
            {
                "host": "api.localhost",
                "path": "/",
                "app": "api",
                "backends": [{"address": "127.0.0.1:7070", "instance": "control"}],
            },
            {
                "host": "a.localhost",
                "path": "/",
                "app": "a",
                "backends": [{"address": "10.0.0.1:5000", "instance": "i-a"}],
            },
            {
                "host": "b.localhost",
                "path": "/",
                "app": "b",
                "backends": [{"address": address_b, "instance": "i-b"}],
            },
        ],
    }


def test_a_scoped_token_sees_its_routes_without_addresses() -> None:
    view = scoped_table(table(), "deploy", frozenset({"a"}))
    assert view["routes"] == [
        {"host": "a.localhost", "path": "/", "app": "a", "backends": [{"instance": "i-a"}]}
    ]
    # another app's change does not show through the etag of this view
    assert scoped_table(table("10.9.9.9:1"), "read", frozenset({"a"}))["etag"] == view["etag"]
    unscoped = scoped_table(table(), "deploy", None)
    assert [r["app"] for r in unscoped["routes"]] == ["a", "b"]
    assert all("address" not in b for r in unscoped["routes"] for b in r["backends"])


def test_infrastructure_tokens_see_the_whole_table() -> None:
    for kind in ("admin", "edge"):
        assert scoped_table(table(), kind, None) == table()
