"""Which process type a scale request means, and which parts of a config change change
nothing (the control API's pure decisions behind `foundry scale` and `set-env`)."""

from __future__ import annotations

import pytest

from control.api_apps import process_to_scale, unchanged_keys
from control.errors import BadRequest, FoundryError, Unprocessable


@pytest.mark.parametrize(
    ("requested", "types", "autoscaling", "expected"),
    [
        (None, ["web"], False, "web"),
        (None, ["worker"], False, "worker"),  # the only type, not "web"
        (None, ["worker", "release"], False, "worker"),  # the release phase is not a type
        (None, ["web", "worker"], False, "web"),
        ("worker", ["web", "worker"], False, "worker"),
        (None, ["web", "worker"], True, "web"),
        (None, [], False, "web"),  # no release yet: types unknown,
        ("worker", [], False, "worker"),  # so the scale is kept as asked
        (None, [], True, "web"),
    ],
)
def test_the_type_a_scale_means(
    requested: str | None, types: list[str], autoscaling: bool, expected: str
) -> None:
    assert process_to_scale("a", requested, types, autoscaling) == expected


@pytest.mark.parametrize(
    ("requested", "types", "autoscaling", "error", "message"),
    [
        (
            "nosuchtype",
            ["worker"],
            False,
            Unprocessable,
            "a has no process type 'nosuchtype' (it has worker)",
        ),
        (
            None,
            ["worker", "clock"],
            False,
            BadRequest,
            "a has no web process; name one with -p (clock, worker)",
        ),
        ("worker", [], True, BadRequest, "only the web process type"),
        (None, ["worker"], True, Unprocessable, "a has no process type 'web' (it has worker)"),
        ("worker", ["web", "worker"], True, BadRequest, "only the web process type"),
        ("release", ["web", "release"], False, Unprocessable, "a has no process type 'release'"),
    ],
)
def test_scales_refused(
    requested: str | None,
    types: list[str],
    autoscaling: bool,
    error: type[FoundryError],
    message: str,
) -> None:
    with pytest.raises(error) as caught:
        process_to_scale("a", requested, types, autoscaling)
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize(
    ("sets", "unsets", "expected"),
    [
        ({}, ["NOPE"], ["NOPE"]),
        ({}, ["A"], []),
        ({"A": "1"}, [], ["A"]),
        ({"A": "2"}, [], []),
        ({"B": "1"}, ["NOPE", "A"], ["NOPE"]),
        ({"NOPE": "1"}, ["NOPE"], []),  # set and unset together: not a no-op
    ],
)
def test_config_keys_that_change_nothing(
    sets: dict[str, str], unsets: list[str], expected: list[str]
) -> None:
    assert unchanged_keys({"A": "1"}, sets, unsets) == expected
