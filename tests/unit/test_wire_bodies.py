"""What the control plane accepts from a node names every field the node's messages carry.

Messages from other roles drop keys their spec does not declare (so a newer node can talk to
an older control plane); the price is that a field added to a message in
control/wire_node.py and not to its spec in control/bodies.py would be dropped without a
word. This keeps the two declarations naming the same fields."""

from __future__ import annotations

from typing import Any

import pytest

from control import bodies, wire_node
from control.schema import Body

PAIRS = [
    (wire_node.JoinRequest, bodies.JoinBody),
    (wire_node.Heartbeat, bodies.HeartbeatBody),
    (wire_node.InstanceReport, bodies.InstanceBody),
    (wire_node.BuildResult, bodies.BuildResultBody),
    (wire_node.TaskResult, bodies.TaskResultBody),
    (wire_node.LogLine, bodies.LogLineBody),
    (wire_node.LogBatch, bodies.LogsBody),
]


@pytest.mark.parametrize(("sent", "accepted"), PAIRS, ids=lambda t: t.__name__)
def test_every_field_a_node_sends_is_accepted(sent: Any, accepted: Any) -> None:
    assert set(sent.__annotations__) == set(accepted.__annotations__)


def test_every_node_body_is_paired() -> None:
    node_bodies: list[Body[Any]] = [
        bodies.JOIN,
        bodies.HEARTBEAT,
        bodies.BUILD_RESULT,
        bodies.TASK_RESULT,
        bodies.LOGS,
    ]
    assert {b.shape for b in node_bodies} <= {accepted for _, accepted in PAIRS}
