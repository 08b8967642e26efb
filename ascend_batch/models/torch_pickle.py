"""Read a legacy (pre-zip) ``torch.save`` file into numpy arrays, without torch and without trusting it.

The legacy format is a sequence of pickles followed by raw storage bytes::

    pickle(MAGIC_NUMBER)  pickle(PROTOCOL_VERSION)  pickle(sys_info)
    pickle(state_dict)    pickle([storage keys])
    for each key, in that order: int64 little-endian element count, then the raw elements

Every pickle goes through a restricted :class:`pickle.Unpickler` whose ``find_class`` admits only the
few globals a tensor state dict needs (``torch._utils._rebuild_tensor_v2``, the storage types,
``collections.OrderedDict``); anything else raises :class:`UnsafePickleError` before it can run.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_TAR_MAGIC_OFFSET = 257  # "ustar" in a tar header: torch's oldest (tar) format


class UnsafePickleError(ValueError):
    """The file's pickle references a global that a plain tensor state dict never needs."""


class TorchFormatError(ValueError):
    """Not a legacy torch file, an unsupported variant of one, or a truncated/corrupt one."""


@dataclass(frozen=True)
class _StorageType:
    """A ``torch.<Name>Storage`` class, as the numpy dtype of its elements."""

    name: str
    dtype: np.dtype
    bfloat16: bool = False  # raw uint16 halves of float32, widened after reading


_STORAGE_TYPES: dict[str, _StorageType] = {
    name: _StorageType(name, np.dtype(dtype), name == "BFloat16Storage")
    for name, dtype in {
        "FloatStorage": "float32",
        "DoubleStorage": "float64",
        "HalfStorage": "float16",
        "BFloat16Storage": "uint16",
        "LongStorage": "int64",
        "IntStorage": "int32",
        "ShortStorage": "int16",
        "CharStorage": "int8",
        "ByteStorage": "uint8",
        "BoolStorage": "bool",
        "ComplexFloatStorage": "complex64",
        "ComplexDoubleStorage": "complex128",
    }.items()
}


@dataclass
class _RootStorage:
    """One storage of the file; ``data`` is filled once the storage bytes after the pickles are read."""

    key: str
    stype: _StorageType
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _StorageView:
    """What ``persistent_load`` hands to the pickle: a root storage, or a slice of one."""

    root: _RootStorage
    offset: int
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A tensor whose storage bytes are not read yet (they come after the pickle)."""

    view: _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _as_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TorchFormatError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _as_ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list):
        raise TorchFormatError(f"{what} must be a tuple of ints, got {type(value).__name__}")
    return tuple(_as_int(v, what) for v in value)


def _rebuild_tensor(storage: object, storage_offset: object, size: object, stride: object) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor``: records where the tensor lives."""
    if not isinstance(storage, _StorageView):
        raise TorchFormatError(f"tensor storage must be a persistent storage, got {type(storage).__name__}")
    shape = _as_ints(size, "tensor size")
    strides = _as_ints(stride, "tensor stride")
    if len(shape) != len(strides):
        raise TorchFormatError(f"tensor size {shape} and stride {strides} differ in length")
    return _TensorRef(storage, _as_int(storage_offset, "storage offset"), shape, strides)


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (gradient flags and hooks are dropped)."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: object, requires_grad: object = False, backward_hooks: object = None) -> object:
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise TorchFormatError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


_REBUILDERS: dict[str, Any] = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_parameter": _rebuild_parameter,
}


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Plain data only: every global and every persistent id is refused."""

    def find_class(self, module: str, name: str) -> NoReturn:
        raise UnsafePickleError(f"refusing to load {module}.{name}: this file's pickle references a global")

    def persistent_load(self, pid: Any) -> NoReturn:
        raise TorchFormatError(f"unexpected persistent id {pid!r} outside the state dict")


class _StateDictUnpickler(pickle.Unpickler):
    """Admits only what a tensor state dict needs; storages come back as :class:`_StorageView`."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, _RootStorage] = {}
        self._views: dict[str, _StorageView] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in _REBUILDERS:
            return _REBUILDERS[name]
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: not a plain tensor state dict "
            "(only torch._utils._rebuild_tensor*, torch.*Storage and collections.OrderedDict are allowed)"
        )

    def persistent_load(self, pid: Any) -> _StorageView:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise TorchFormatError(f"unsupported persistent id {kind!r} (only storages are supported)")
        if len(pid) != 6:
            raise TorchFormatError(f"malformed storage id {pid!r}")
        _, stype, key, _location, numel, view_metadata = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise TorchFormatError(f"malformed storage id {pid!r}")
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _RootStorage(key, stype, _as_int(numel, "storage size"))
        elif root.stype != stype:
            raise TorchFormatError(f"storage {key!r} is referenced with two types")
        if view_metadata is None:
            return _StorageView(root, 0, root.numel)
        return self._view(root, view_metadata)

    def _view(self, root: _RootStorage, meta: object) -> _StorageView:
        if not isinstance(meta, tuple) or len(meta) != 3 or not isinstance(meta[0], str):
            raise TorchFormatError(f"malformed storage view {meta!r}")
        view_key, offset, numel = meta
        view = self._views.get(view_key)
        if view is None:
            view = _StorageView(root, _as_int(offset, "view offset"), _as_int(numel, "view size"))
            if view.offset + view.numel > root.numel:
                raise TorchFormatError(f"storage view {view_key!r} runs past its storage {root.key!r}")
            self._views[view_key] = view
        return view


def _load_pickle(unpickler: pickle.Unpickler, what: str) -> Any:
    try:
        return unpickler.load()
    except (UnsafePickleError, TorchFormatError):
        raise
    except Exception as exc:  # a corrupt pickle can raise nearly anything
        raise TorchFormatError(f"cannot read the {what} pickle: {type(exc).__name__}: {exc}") from None


def _check_container(f: IO[bytes]) -> None:
    head = f.read(_TAR_MAGIC_OFFSET + 8)
    f.seek(0)
    if head.startswith(_ZIP_MAGIC):
        raise TorchFormatError(
            "this is a zip-format torch file (torch >= 1.6 default); only the legacy format can be read "
            "without torch: re-save it with torch.save(obj, f, _use_new_zipfile_serialization=False)"
        )
    if head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        raise TorchFormatError("this is a tar-format torch file (torch < 0.4), which is not supported")


def _read_header(f: IO[bytes]) -> bool:
    """Check magic number and protocol version; return whether the storages are little-endian."""
    magic = _load_pickle(_NoGlobalsUnpickler(f), "magic number")
    if magic != MAGIC_NUMBER:
        raise TorchFormatError("not a legacy torch file (bad magic number)")
    version = _load_pickle(_NoGlobalsUnpickler(f), "protocol version")
    if version != PROTOCOL_VERSION:
        raise TorchFormatError(f"unsupported torch protocol version {version!r} (expected {PROTOCOL_VERSION})")
    sys_info = _load_pickle(_NoGlobalsUnpickler(f), "sys info")
    if not isinstance(sys_info, dict):
        raise TorchFormatError("malformed sys info pickle")
    return bool(sys_info.get("little_endian", True))


def _read_storages(
    f: IO[bytes], storages: dict[str, _RootStorage], keys: object, little_endian: bool, file_size: int
) -> None:
    """Fill ``data`` of every storage from the raw section after the pickles."""
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TorchFormatError("malformed storage key list")
    if set(keys) != set(storages) or len(keys) != len(storages):
        raise TorchFormatError("the storage key list does not match the storages the state dict uses")
    for key in keys:
        root = storages[key]
        count = f.read(8)
        if len(count) != 8:
            raise TorchFormatError(f"file is truncated (storage {key!r})")
        (numel,) = struct.unpack("<q", count)
        if numel != root.numel:
            raise TorchFormatError(f"storage {key!r} holds {numel} elements, the pickle says {root.numel}")
        dtype = root.stype.dtype.newbyteorder("<" if little_endian else ">")
        nbytes = numel * dtype.itemsize
        if nbytes > file_size - f.tell():
            raise TorchFormatError(f"file is truncated (storage {key!r})")
        root.data = np.frombuffer(f.read(nbytes), dtype=dtype)


def _materialise(ref: _TensorRef) -> np.ndarray:
    """The tensor as a contiguous native-endian array (``as_strided`` over its storage, bounds-checked)."""
    root = ref.view.root
    assert root.data is not None
    start = ref.view.offset + ref.offset
    if 0 in ref.size:
        out = np.zeros(ref.size, dtype=root.data.dtype)
    else:
        last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        if last >= ref.view.offset + ref.view.numel:
            raise TorchFormatError(f"tensor of size {ref.size} stride {ref.stride} runs past its storage {root.key!r}")
        flat = root.data[start : last + 1]
        strides = tuple(s * flat.itemsize for s in ref.stride)
        out = np.array(np.lib.stride_tricks.as_strided(flat, ref.size, strides, writeable=False), order="C")
    out = out.astype(out.dtype.newbyteorder("="), copy=False)
    if root.stype.bfloat16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out  # a fresh C-contiguous array (np.ascontiguousarray would turn 0-d into 1-d)


def load_legacy_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format ``torch.save`` state dict, by name, in file order.

    Raises :class:`UnsafePickleError` if the pickle references anything beyond plain tensors,
    :class:`TorchFormatError` for zip-format, corrupt or truncated files, and ``OSError`` if the file
    cannot be read. Nothing from the file is executed.
    """
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        _check_container(f)
        little_endian = _read_header(f)
        unpickler = _StateDictUnpickler(f)
        state = _load_pickle(unpickler, "state dict")
        keys = _load_pickle(_NoGlobalsUnpickler(f), "storage keys")
        _read_storages(f, unpickler.storages, keys, little_endian, file_size)
    if not isinstance(state, dict):
        raise TorchFormatError(f"the file holds a {type(state).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise TorchFormatError(f"state dict entry {name!r} is not a tensor")
        out[name] = _materialise(value)
    return out
