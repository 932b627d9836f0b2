"""One producer, several consumers that each pull an iterable: batches of several streams written at once.

`sparseae.data.shards.write_into` pulls its batches from an iterable and writes the manifest
when it ends. To fill several caches from one forward pass, each writer runs in its own thread
over a short queue while the producer (the forward pass, in the caller's thread) pushes each
batch's part to each queue: memory holds a few batches, never a whole cache.

A failure on either side ends both: a writer's error stops the producer and is raised; the
producer's error (or Ctrl-C) makes every writer's iterable raise `Aborted`, so that each writer
stops without a manifest, and the producer's error is raised.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_END, _ABORT = object(), object()
DEPTH = 2
"""Batches waiting for each consumer: enough to overlap writing one with computing the next."""


class Aborted(Exception):
    """Raised inside a consumer's iterable when the producer failed."""


def _pull(q: queue.Queue) -> Iterator[Any]:
    while (item := q.get()) is not _END:
        if item is _ABORT:
            raise Aborted
        yield item


def _offer(q: queue.Queue, item: Any, consumer: Future) -> bool:
    """Put ``item`` on ``q`` unless its consumer has ended (then False): a dead consumer never empties its queue."""
    while not consumer.done():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def fan_out(batches: Iterable[Mapping[str, Any]], consumers: Mapping[str, Callable[[Iterable[Any]], Any]]) -> dict[str, Any]:
    """Give ``batches[i][name]`` to ``consumers[name]`` (each called once, in its own thread, with an iterable
    of its items in order); returns each consumer's result once all have ended."""
    queues = {name: queue.Queue(maxsize=DEPTH) for name in consumers}
    with ThreadPoolExecutor(len(consumers), thread_name_prefix="fan-out") as pool:
        futures = {name: pool.submit(consume, _pull(queues[name])) for name, consume in consumers.items()}
        ending = _ABORT
        try:
            for batch in batches:
                for name, q in queues.items():
                    if not _offer(q, batch[name], futures[name]):
                        futures[name].result()  # the consumer's error
                        raise RuntimeError(f"{name}: the consumer ended before its items did")
            ending = _END
        finally:
            for name, q in queues.items():
                _offer(q, ending, futures[name])
        return {name: future.result() for name, future in futures.items()}
