"""The task runner: tasks sharing parts get each part once, in order, and let go of it."""

import gc
import threading
import time
import weakref

import pytest

from discomkd_geo.inference.runner import chunk_runner


class Part:
    """A part's result (weak references tell whether it is still held)."""

    def __init__(self, key: int) -> None:
        self.key = key


def neighbours(item: int) -> list[int]:
    """Item ``i`` needs parts ``i - 1``, ``i`` and ``i + 1`` (those from 0)."""
    return [key for key in (item - 1, item, item + 1) if key >= 0]


def test_parts_are_computed_once_passed_in_order_and_let_go() -> None:
    alive: weakref.WeakSet[Part] = weakref.WeakSet()
    calls: list[int] = []
    lock = threading.Lock()

    def part(shared: str, key: int) -> Part:
        result = Part(key)
        with lock:
            calls.append(key)
            alive.add(result)
        time.sleep(0.001)
        return result

    def task(shared: str, item: int, *parts: Part) -> tuple[str, int, list[int]]:
        return shared, item, [p.key for p in parts]

    peak = 0
    gc.disable()  # parts must be freed by reference counting, not by the cycle collector
    try:
        with chunk_runner("model", workers=2) as runner:
            results = []
            for item, result in runner.map_with_parts(task, range(100), part, neighbours):
                results.append((item, result))
                peak = max(peak, len(alive))
    finally:
        gc.enable()
    assert results == [(i, ("model", i, neighbours(i))) for i in range(100)]
    assert sorted(calls) == list(range(101))
    # 4 tasks in flight (2 slots) hold about 6 parts: never all 101.
    assert peak <= 8 and len(alive) == 0


def test_a_failed_part_fails_the_tasks_that_need_it() -> None:
    def part(shared: None, key: int) -> int:
        if key == 5:
            raise ValueError("part 5 is broken")
        return key

    def task(shared: None, item: int, *parts: int) -> int:
        return sum(parts)

    done = []
    with chunk_runner(None, workers=2) as runner, pytest.raises(ValueError, match="part 5"):
        for item, _ in runner.map_with_parts(task, range(10), part, neighbours):
            done.append(item)
    assert done == [0, 1, 2, 3]  # item 4 needs part 5
