"""`edge.upstream.may_replay`: which unanswered requests the edge sends again, and how often."""

from __future__ import annotations

import pytest

from edge.upstream import MAX_REPLAYS, may_replay


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
def test_an_unanswered_idempotent_bodiless_request_is_replayed_up_to_the_bound(
    method: bytes,
) -> None:
    allowed = [
        may_replay(replays=n, response_bytes=0, method=method, has_body=False)
        for n in range(MAX_REPLAYS + 2)
    ]
    assert allowed == [True] * MAX_REPLAYS + [False, False]


@pytest.mark.parametrize(
    ("method", "response_bytes", "has_body"),
    [
        (b"POST", 0, False),  # not idempotent: the backend may have acted on it
        (b"PATCH", 0, False),
        (b"GET", 1, False),  # the backend began an answer: relayed or reported, never repeated
        (b"PUT", 0, True),  # a streamed body is gone once sent
    ],
)
def test_other_requests_are_never_replayed(
    method: bytes, response_bytes: int, has_body: bool
) -> None:
    assert not may_replay(
        replays=0, response_bytes=response_bytes, method=method, has_body=has_body
    )
