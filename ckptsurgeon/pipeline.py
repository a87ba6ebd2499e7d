"""Running an iterator ahead in a thread, so that I/O or number generation overlaps other work.

``pread``, ``copy_file_range`` and numpy's kernels release the GIL, so on two cores a producer
thread and the consumer really run at once. The queue bound keeps memory at ``depth`` items.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def background(items: Iterator[Any], depth: int = 2) -> Generator[Any, None, None]:
    """Yield ``items`` in order, produced up to ``depth`` ahead by a thread.

    Exceptions in the producer are raised in the consumer. Closing the generator (or leaving
    a ``for`` loop early) stops the producer.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # forwarded to the consumer
            put(("error", exc))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()


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
