"""Decoding ahead for device decode stages (nvJPEG, DVPP): batch k+1 decodes in a helper thread while
batch k infers. Needs no runtime (no torch, no pyACL)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from .base import DeviceDecoder

K = TypeVar("K")


def prefetched(
    decoder: DeviceDecoder,
    batches: Iterable[tuple[K, Sequence[bytes]]],
    cpu_decode: Any = None,
    depth: int = 1,
) -> Iterator[tuple[K, Any]]:
    """``(key, decoder.decode(datas))`` for each ``(key, datas)`` of ``batches``, decoding ``depth``
    batches ahead in a helper thread so the decode of batch k+1 overlaps the inference of batch k. The key
    (e.g. the listing positions of the batch) travels with its batch; order is kept."""
    with cf.ThreadPoolExecutor(1, thread_name_prefix="device-decode") as pool:
        pending: collections.deque[tuple[K, cf.Future[Any]]] = collections.deque()
        for key, datas in batches:
            pending.append((key, pool.submit(decoder.decode, datas, cpu_decode)))
            if len(pending) > depth:
                k, fut = pending.popleft()
                yield k, fut.result()
        while pending:
            k, fut = pending.popleft()
            yield k, fut.result()
