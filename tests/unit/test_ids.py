"""Object IDs: 25 base-36 characters of 128 random bits, never repeated, drawn from the
OS in batches, and a forked child does not give out its parent's next ones."""

from __future__ import annotations

import os
import re

from shoal.ids import ID_LENGTH, new_id


def test_ids_are_swarmkit_shaped_and_distinct() -> None:
    ids = [new_id() for _ in range(5000)]  # many draws of the pool
    assert all(re.fullmatch(r"[0-9a-z]{25}", i) for i in ids)
    assert len(set(ids)) == len(ids) and ID_LENGTH == 25


def test_a_forked_child_draws_its_own() -> None:
    new_id()  # the pool holds IDs now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_id()
