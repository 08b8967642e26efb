"""The backend protocol (DESIGN.md) and the device spec.

A :class:`Backend` opens a :class:`Session` *inside the worker process* (pyACL contexts and
CUDA/NPU runtimes do not survive ``fork``). A session owns everything it acquired and releases it
in reverse order in :meth:`Session.close`, which is idempotent and safe after a failed ``open``.

``Session.infer`` takes ``1 <= n <= session.max_batch`` samples shaped like
``model.preprocess.input_shape(n)`` and returns ``(n, num_classes)`` float32 logits. Sessions of
static-batch models pad internally and never return the padding rows.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import StartupError
from ..models.spec import ModelSpec
from ..preprocess import Preprocess

DEVICE_KINDS = ("cpu", "cuda", "npu")
_DEVICE_RE = re.compile(r"^(cpu|cuda|npu)(?::(\d+))?$")


@dataclass(frozen=True, order=True)
class Device:
    kind: str  # cpu | cuda | npu
    index: int = 0

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"


def parse_device(spec: object, default_kind: str = "cpu") -> Device:
    """``"cpu:0"``, ``"cuda:1"``, ``"npu:0"``, ``"cpu"``, or a bare integer (accelerator index,
    of ``default_kind``). Raises ``ValueError`` with what was expected."""
    if isinstance(spec, bool):
        raise ValueError(f"expected a device like 'cpu:0', 'cuda:1' or an index, got {spec!r}")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"device index must be >= 0, got {spec}")
        return Device(default_kind, spec)
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text.isdigit():
            return Device(default_kind, int(text))
        m = _DEVICE_RE.match(text)
        if m:
            return Device(m.group(1), int(m.group(2) or 0))
    raise ValueError(f"expected a device like 'cpu:0', 'cuda:1', 'npu:0' or an index, got {spec!r}")


@dataclass(frozen=True)
class SessionFeatures:
    """What a session can do, declared once by its class (the worker never probes with ``getattr``)."""

    concurrent_infer: bool = False  # infer() may run in several threads at once (CPU onnxruntime)
    device_decode: bool = False  # device_decoder() may return a decoder that feeds infer_device()


@dataclass(frozen=True)
class BackendFeatures:
    """What a backend can do before any session exists."""

    open_in_thread: bool = False  # sessions are not bound to the opening thread: open while decoding starts
    device_decode: bool = False  # its sessions may offer a device decode stage (asked once a session is open)


class DeviceBatch(Protocol):
    """One batch decoded on the device: ``rows[k]`` is the input position of row ``k`` of the payload;
    ``results[i]`` is ``(width, height)`` of input ``i`` or the :class:`ImageError` that stopped it;
    ``gpu``/``cpu`` count the inputs the device and the CPU fallback decoded."""

    rows: list[int]
    results: list[Any]
    gpu: int
    cpu: int


class DeviceDecoder(Protocol):
    """Bytes of one batch -> a :class:`DeviceBatch` on the session's device; files it cannot take go to
    ``cpu_decode`` (the CPU path, one result per input)."""

    def decode(self, datas: Any, cpu_decode: Any = None) -> Any: ...


@runtime_checkable
class Session(Protocol):
    features: SessionFeatures
    input_shape: tuple[int, ...]  # (N, C, H, W) or (N, H, W, C); N = max_batch
    max_batch: int
    device: Device

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def input_preprocess(self, pp: Preprocess) -> Preprocess: ...

    def device_decoder(self, max_pixels: int, max_batch: int) -> DeviceDecoder | None: ...

    def infer_device(self, batch: Any) -> np.ndarray: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    features: BackendFeatures

    def open(self, device: Device, model: ModelSpec, *, batch_size: int, threads: int) -> Session: ...


class SessionBase:
    """Defaults for sessions without a device decode stage (subclass it, or declare the same)."""

    features = SessionFeatures()

    def input_preprocess(self, pp: Preprocess) -> Preprocess:
        """What ``infer`` takes, given the manifest's preprocessing: the same, unless the model does
        part of it itself (an AIPP model on Ascend takes uint8 RGB crops)."""
        return pp

    def device_decoder(self, max_pixels: int, max_batch: int) -> DeviceDecoder | None:
        return None

    def infer_device(self, batch: Any) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no device decode stage")


@dataclass(frozen=True)
class BackendEntry:
    """A built-in backend: where its class lives, its default device kind, the model formats it runs."""

    name: str
    module: str
    cls: str
    default_device_kind: str
    formats: tuple[str, ...]


BACKENDS: dict[str, BackendEntry] = {
    e.name: e
    for e in (
        BackendEntry("onnxruntime", "ascend_batch.backends.onnx", "OnnxBackend", "cpu", ("onnx",)),
        BackendEntry("acl", "ascend_batch.backends.acl", "AclBackend", "npu", ("om",)),
        BackendEntry(
            "torch",
            "ascend_batch.backends.torch",
            "TorchBackend",
            "cuda",
            ("torchscript", "torch-export", "state-dict"),
        ),
    )
}


def is_plugin(name: str) -> bool:
    """``package.module:ClassName`` names a backend outside this package (a plugin)."""
    return ":" in name


def get_backend(name: str, options: Mapping[str, Any] | None = None) -> Backend:
    """Import and instantiate the backend ``name`` (only now: heavy runtimes stay unimported);
    ``options`` (backend-specific manifest keys that were set) go to its constructor.

    ``name`` is a built-in backend or a plugin ``package.module:ClassName`` whose class implements
    the protocol above."""
    if is_plugin(name):
        module_name, _, cls_name = name.partition(":")
    elif name in BACKENDS:
        module_name, cls_name = BACKENDS[name].module, BACKENDS[name].cls
    else:
        raise StartupError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StartupError(f"backend {name!r} is not available: {exc}") from exc
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise StartupError(f"backend {name!r}: {module_name} has no class {cls_name}")
    if not isinstance(getattr(cls, "features", None), BackendFeatures):
        raise StartupError(
            f"backend {name!r}: {cls_name} declares no 'features = BackendFeatures(...)' "
            "(see ascend_batch.backends.base)"
        )
    backend: Backend = cls(options) if options else cls()
    return backend
