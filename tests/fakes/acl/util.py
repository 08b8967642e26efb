"""``acl.util``: host pointers. Older CANN has ``numpy_to_ptr``/``ptr_to_numpy``, newer CANN
``bytes_to_ptr``/``ptr_to_bytes`` (the numpy pair was dropped). This fake has both; hide one pair
with ``ACL_FAKE_HIDE=util.numpy_to_ptr,util.ptr_to_numpy`` (or ``monkeypatch.delattr``)."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ._state import STATE, api

__all__ = ["bytes_to_ptr", "numpy_to_ptr", "ptr_to_bytes", "ptr_to_numpy"]

_NP_BY_NUM = {
    np.dtype(t).num: np.dtype(t)
    for t in (
        np.int8,
        np.uint8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.int64,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.bool_,
    )
}


@api("util.numpy_to_ptr", "value")
def numpy_to_ptr(array: np.ndarray) -> int:
    """The address of ``array``'s data (it must be C-contiguous; the caller keeps it alive)."""
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise TypeError("numpy_to_ptr needs a C-contiguous numpy array")
    addr = int(array.ctypes.data)
    with STATE.lock:
        STATE.register_host_view(addr, array.nbytes, array)
    return addr


@api("util.bytes_to_ptr", "value")
def bytes_to_ptr(data: bytes | bytearray) -> int:
    """The address of a bytes/bytearray payload (the caller keeps it alive)."""
    if isinstance(data, bytes):
        addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    elif isinstance(data, bytearray):
        addr = ctypes.addressof((ctypes.c_char * len(data)).from_buffer(data)) if data else 0
    else:
        raise TypeError("bytes_to_ptr needs bytes or bytearray")
    with STATE.lock:
        STATE.register_host_view(addr, len(data), data)
    return addr


def _check(ptr: int, size: int) -> None:
    with STATE.lock:
        if not STATE.host_region(ptr, size):
            raise ValueError(f"acl.util: {ptr!r}..+{size} is not host memory known to the process")


@api("util.ptr_to_numpy", "value")
def ptr_to_numpy(ptr: int, shape: tuple[int, ...], np_type: int) -> np.ndarray:
    """A numpy view of host memory; ``np_type`` is a numpy type number (``np.dtype(x).num``)."""
    dtype = _NP_BY_NUM[np_type]
    count = int(np.prod(shape))
    _check(ptr, count * dtype.itemsize)
    raw: Any = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@api("util.ptr_to_bytes", "value")
def ptr_to_bytes(ptr: int, size: int) -> bytes:
    """A copy of ``size`` bytes of host memory."""
    _check(ptr, size)
    return ctypes.string_at(ptr, size)
