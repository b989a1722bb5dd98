"""DrainTracker's bookkeeping (dispatcher/drain.py): a leaving task is drained once
every node that had a session has acknowledged the network update it was sent; a node
whose session ends stops counting; acknowledgements only move forward."""

from __future__ import annotations

from shoal.manager.dispatcher.drain import DrainTracker


def test_drained_once_every_node_acknowledged_what_it_was_sent() -> None:
    d = DrainTracker()
    for n in ("a", "b", "c"):
        d.session_started(n)
    assert d.acked("c", 4) == {}
    # t1 on a: a was sent up to 3, b up to 5, c up to 4 (c has acknowledged that)
    assert d.leaving("t1", "a", {"a": 3, "b": 5, "c": 4}) is False
    assert len(d) == 1
    assert d.acked("b", 4) == {}  # not enough
    assert d.acked("a", 3) == {}
    assert d.acked("b", 3) == {}  # going back: ignored
    assert d.acked("b", 5) == {"a": ["t1"]}
    assert len(d) == 0


def test_already_drained_when_every_node_is_up_to_date() -> None:
    d = DrainTracker()
    d.session_started("a")
    d.acked("a", 2)
    assert d.leaving("t1", "a", {"a": 2}) is True
    assert len(d) == 0


def test_a_node_whose_session_ends_no_longer_counts() -> None:
    d = DrainTracker()
    for n in ("a", "b"):
        d.session_started(n)
    d.leaving("t1", "a", {"a": 1, "b": 1})
    d.leaving("t2", "b", {"a": 1, "b": 1})
    assert d.acked("a", 1) == {}
    # b goes: t1 (on a) waited only for b now: drained; t2 (on b) cannot be told: dropped
    assert d.session_ended("b") == {"a": ["t1"]}
    assert len(d) == 0


def test_forget_and_a_new_session_numbers_from_one() -> None:
    d = DrainTracker()
    d.session_started("a")
    d.leaving("t1", "a", {"a": 7})
    d.forget("t1")
    assert d.acked("a", 7) == {}
    d.session_started("a")  # reconnected: its numbers start again
    d.leaving("t2", "a", {"a": 1})
    assert d.acked("a", 1) == {"a": ["t2"]}
