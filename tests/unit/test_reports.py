"""Reports from nodes, as pure decisions: which failed report the node sends again and
after how long (node/client.py), how the control plane answers a report it has seen
before (control/reports.py), and when it gives up on a build no node reports on
(control/reconciler.py `build_overdue`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.model import BuildState, TaskState
from control.reconciler import Policy, build_overdue
from control.reports import repeated_build_result, repeated_task_result
from control.rows import BuildRow, TaskRow
from control.tasks import task_overdue
from node.client import REPORTS, Backoff, is_retriable, retry_delay

DROPLET = "d" * 64


@pytest.mark.parametrize(
    ("status", "bytes_sent", "idempotent", "retry"),
    [
        (None, False, False, True),  # nothing reached the server: always safe
        (None, True, True, True),  # the answer was lost, but the report is idempotent
        (None, True, False, False),  # it may have acted: not twice
        (500, True, True, True),
        (502, True, True, True),
        (503, True, False, True),  # an answer that says the server failed, not "no"
        (507, True, True, True),  # out of space: it comes back when space does
        (408, True, True, True),
        (429, True, True, True),
        (400, True, True, False),
        (401, True, True, False),
        (404, True, True, False),
        (409, True, True, False),  # the build was failed meanwhile: drop the result
        (413, True, True, False),
        (422, True, True, False),
    ],
)
def test_is_retriable(status: int | None, bytes_sent: bool, idempotent: bool, retry: bool) -> None:
    assert is_retriable(status, bytes_sent, idempotent) is retry


def test_retry_delays_double_from_a_quarter_second_to_a_ten_second_cap() -> None:
    top = [retry_delay(n, REPORTS, 0.0) for n in range(1, 10)]
    assert top == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert retry_delay(3, REPORTS, 0.999999) == pytest.approx(0.5, abs=1e-5)  # half of 1.0
    assert retry_delay(10_000, REPORTS, 0.0) == 10.0  # no overflow however long it fails


@given(st.integers(1, 10_000), st.floats(0, 1, exclude_max=True))
def test_retry_delay_is_jittered_within_half_and_capped(attempt: int, rand: float) -> None:
    delay = retry_delay(attempt, REPORTS, rand)
    top = min(REPORTS.first * 2 ** min(attempt - 1, 64), REPORTS.cap)
    assert top / 2 <= delay <= top <= REPORTS.cap


def test_no_jitter_gives_the_plain_doubling() -> None:
    fixed = Backoff(first=1.0, cap=5.0, jitter=0.0)
    assert [retry_delay(n, fixed, 0.7) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def build(state: BuildState, **over: object) -> BuildRow:
    row: BuildRow = {
        "id": "b-1",
        "app": "shop",
        "state": state,
        "source": "s" * 64,
        "node": "n-1",
        "droplet": None,
        "pack": None,
        "processes": None,
        "error": None,
        "release": None,
        "created_at": 0.0,
        "finished_at": None,
        "heard_at": None,
    }
    return {**row, **over}  # type: ignore[typeddict-item]


def task(state: TaskState, exit_code: int | None, reason: str | None) -> TaskRow:
    return {
        "id": "t-1",
        "app": "shop",
        "kind": "release",
        "command": "migrate",
        "state": state,
        "node": "n-1",
        "build": "b-1",
        "exit_code": exit_code,
        "reason": reason,
        "created_at": 0.0,
        "finished_at": 1.0,
        "payload": {"droplet": DROPLET},
    }


def test_the_same_success_again_gets_the_first_answer() -> None:
    staged = build(BuildState.STAGED, droplet=DROPLET, release=4)
    repeat = repeated_build_result(staged, True, DROPLET, "build failed", None)
    assert (repeat.answer, repeat.refusal) == ({"state": "STAGED", "release": 4}, None)


def test_the_same_failure_again_gets_the_first_answer() -> None:
    failed = build(BuildState.FAILED, error="pack compile failed (exit 1)")
    repeat = repeated_build_result(failed, False, "", "pack compile failed (exit 1)", None)
    assert (repeat.answer, repeat.refusal) == ({"state": "FAILED"}, None)


def test_a_success_again_while_its_release_phase_runs_starts_no_second_one() -> None:
    staging = build(BuildState.STAGING)
    phase = task(TaskState.RUNNING, None, None)
    repeat = repeated_build_result(staging, True, DROPLET, "", phase)
    assert repeat.answer == {"state": "STAGING", "release_phase": "t-1"}


def test_a_failure_after_the_release_phase_started_is_refused() -> None:
    repeat = repeated_build_result(
        build(BuildState.STAGING), False, "", "boom", task(TaskState.RUNNING, None, None)
    )
    assert repeat.refusal == (
        "build b-1 already reported success: its release phase t-1 is RUNNING; "
        "this result is dropped"
    )


def test_a_result_for_a_build_failed_meanwhile_is_refused_saying_so() -> None:
    timed_out = build(BuildState.FAILED, error="no node reported the build within 1200 s")
    repeat = repeated_build_result(timed_out, True, DROPLET, "", None)
    assert repeat.answer is None
    assert repeat.refusal == (
        "build b-1 already ended FAILED (no node reported the build within 1200 s); "
        "this result is dropped"
    )


def test_another_droplet_for_a_staged_build_is_refused() -> None:
    staged = build(BuildState.STAGED, droplet=DROPLET, release=4)
    assert repeated_build_result(staged, True, "e" * 64, "", None).refusal is not None
    assert repeated_build_result(staged, False, "", "boom", None).refusal is not None


def test_task_results_repeat_or_refuse() -> None:
    done = task(TaskState.SUCCEEDED, 0, None)
    assert repeated_task_result(done, 0, None).answer == {"state": "SUCCEEDED"}
    lost = task(TaskState.FAILED, None, "the node running it was lost")
    refused = repeated_task_result(lost, 0, None)
    assert refused.refusal == (
        "task t-1 already ended FAILED (the node running it was lost); this result is dropped"
    )


POLICY = Policy(build_timeout=100.0)


@pytest.mark.parametrize(
    ("state", "created", "heard", "now", "why"),
    [
        (BuildState.STAGING, 0.0, 10.0, 110.0, None),  # exactly at the limit: not yet
        (BuildState.STAGING, 0.0, 10.0, 110.5, "no node reported the build within 100 s"),
        (BuildState.STAGING, 0.0, None, 101.0, "no node reported the build within 100 s"),
        (BuildState.QUEUED, 0.0, None, 99.0, None),
        (
            BuildState.QUEUED,
            0.0,
            None,
            101.0,
            "no node was available to stage the build within 100 s",
        ),
        (BuildState.STAGED, 0.0, 0.0, 1e9, None),  # ended builds never time out
        (BuildState.FAILED, 0.0, 0.0, 1e9, None),
    ],
)
def test_build_overdue(
    state: BuildState, created: float, heard: float | None, now: float, why: str | None
) -> None:
    assert build_overdue(state, created, heard, now, POLICY) == why


def test_a_build_in_its_release_phase_is_timed_by_the_task_not_the_build() -> None:
    assert build_overdue(BuildState.STAGING, 0.0, 0.0, 1e6, POLICY, release_phase=True) is None


@pytest.mark.parametrize(
    ("kind", "age", "why"),
    [
        ("run", 3900.0, None),  # its 3600 s limit + 300 s for the node to kill and report
        ("run", 3901.0, "no node reported the task within 3900 s"),
        ("release", 1200.0, None),
        ("release", 1201.0, "no node reported the task within 1200 s"),
    ],
)
def test_task_overdue(kind: str, age: float, why: str | None) -> None:
    assert task_overdue(kind, 100.0, 100.0 + age) == why


def test_the_default_build_timeout_outlasts_the_nodes_compile_limit() -> None:
    from node.stager import COMPILE_TIMEOUT

    assert Policy().build_timeout >= COMPILE_TIMEOUT + 60
