"""Request ids stay unique across edge processes: two generators, and forked workers."""

from __future__ import annotations

import os

from edge.exchange import RequestIds, new_request_id


def test_two_generators_never_hand_out_the_same_id() -> None:
    first, second = RequestIds(), RequestIds()
    a = {first.next() for _ in range(1000)}
    b = {second.next() for _ in range(1000)}
    assert len(a) == len(b) == 1000
    assert not a & b


def test_a_forked_worker_does_not_repeat_its_parents_ids() -> None:
    # Edge workers are forked after the module is imported; each must draw its own prefix.
    new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "worker"
        try:
            os.write(write, b",".join(new_request_id() for _ in range(5)))
        finally:
            os._exit(0)
    os.close(write)
    child = set(os.read(read, 4096).split(b","))
    os.close(read)
    os.waitpid(pid, 0)
    parent = {new_request_id() for _ in range(5)}
    assert len(child) == 5
    assert not child & parent
    assert {i[:12] for i in child}.isdisjoint({i[:12] for i in parent})
