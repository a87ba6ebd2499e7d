"""Running an iterator ahead in a thread, so that I/O or number generation overlaps other work.

``pread``, ``copy_file_range`` and numpy's kernels release the GIL, so on two cores a producer
thread and the consumer really run at once. The queue bound keeps memory at ``depth`` items.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
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
