"""Running an iterator ahead in a thread, so that I/O or number generation overlaps other work.

``pread``, ``copy_file_range`` and numpy's kernels release the GIL, so on two cores a producer
thread and the consumer really run at once. The queue bound keeps memory at ``depth`` items.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class background(Iterator[Any]):  # used as a function
    """Yield ``items`` in order, produced ahead by a thread started at once: up to ``depth``
    items, or, with ``budget`` and ``size``, up to ``budget`` bytes (``size(item)`` each; one
    item at least).

    The producer starts now, not at the first ``next()``: a producer whose items are needed only
    late (computed tensors, written after the copied ones) does its work while the caller does
    other work, with memory still bounded. Exceptions in the producer are raised in the
    consumer. ``close()`` (also on garbage collection) stops the producer, started or not.
    """

    def __init__(
        self,
        items: Iterator[Any],
        depth: int = 2,
        *,
        budget: int | None = None,
        size: Callable[[Any], int] | None = None,
    ) -> None:
        self._items = items
        self._size = size if budget is not None and size is not None else None
        self._limit = budget if self._size is not None and budget is not None else depth
        self._q: deque[tuple[str, Any, int]] = deque()
        self._ready = threading.Condition()
        self._stop = False
        self._held = 0  # bytes (or items) produced and not yet taken
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._finished = False
        self._thread.start()

    def _put(self, kind: str, item: Any, w: int) -> bool:
        with self._ready:
            while self._held and self._held + w > self._limit and not self._stop:
                self._ready.wait()
            if self._stop:
                return False
            self._q.append((kind, item, w))
            self._held += w
            self._ready.notify_all()
        return True

    def _pump(self) -> None:
        try:
            for item in self._items:
                w = self._size(item) if self._size is not None else 1
                if not self._put("item", item, w):
                    return
            self._put("done", None, 0)
        except BaseException as exc:  # forwarded to the consumer
            self._put("error", exc, 0)

    def __iter__(self) -> background:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        with self._ready:
            while not self._q:
                self._ready.wait()
            kind, value, w = self._q.popleft()
            self._held -= w
            self._ready.notify_all()
        if kind == "item":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        if getattr(self, "_finished", True):  # closed, or __init__ never got this far
            return
        self._finished = True
        with self._ready:
            self._stop = True
            self._q.clear()
            self._ready.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        self.close()


def ordered_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int | None = None
) -> Iterator[Any]:
    """``map(fn, items)`` on ``workers`` threads (default: the CPUs this process may use),
    results in order, at most ``2 * workers`` in flight. numpy releases the GIL, so chunks of a
    tensor are cast or drawn on every core; no result depends on which thread made it."""
    n = workers if workers is not None else usable_cpus()
    if n <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=n) as pool:
        pending: deque[Future[Any]] = deque()
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
