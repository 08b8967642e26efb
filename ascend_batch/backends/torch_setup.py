"""What a torch session is built from: its options (:class:`TorchOptions`), the torch device
(:func:`torch_device`, which checks it exists) and the model, loaded on the CPU (:func:`load_model`).

============  =====================================================================================
format        what is loaded
============  =====================================================================================
state-dict    ``arch = "efficientnet_lite0"``: the project's own module (:mod:`..models.lite0_torch`);
              any other ``arch``: a torchvision architecture by name (no download), then the weights
              file, both with ``torch.load(..., weights_only=True)``
torchscript   ``torch.jit.load``
torch-export  ``torch.export.load(...).module()``
============  =====================================================================================

Every failure is a :class:`~ascend_batch.errors.StartupError` naming the device, the file or the key.
Imported by :mod:`.torch` (which says what to install when torch is missing).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import BackendError, StartupError
from ..models.spec import ModelSpec
from .base import Device

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ENV_PRECISION = "ASCEND_BATCH_TORCH_PRECISION"
ENV_COMPILE = "ASCEND_BATCH_TORCH_COMPILE"
ENV_CHANNELS_LAST = "ASCEND_BATCH_TORCH_CHANNELS_LAST"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class TorchOptions:
    """Torch-only runtime knobs.

    ``precision``: fp32 | fp16 | bf16; ``None`` = fp16 on cuda and npu, fp32 on cpu.
    ``channels_last``: NHWC memory format for model and input on accelerators (NCHW models only).
    ``compile``: ``torch.compile`` the model (``mode="reduce-overhead"``, i.e. CUDA graphs, on CUDA);
    batches are then padded to the session's batch size so shapes stay static.
    """

    precision: str | None = None
    channels_last: bool = True
    compile: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TorchOptions:
        """From ``ASCEND_BATCH_TORCH_PRECISION``, ``..._COMPILE``, ``..._CHANNELS_LAST`` (until the
        manifest has keys for them)."""
        env = os.environ if environ is None else environ
        precision = env.get(ENV_PRECISION, "").strip().lower() or None
        if precision is not None and precision not in PRECISIONS:
            raise StartupError(f"{ENV_PRECISION}={precision!r}: expected one of {', '.join(PRECISIONS)}")
        return cls(
            precision=precision,
            channels_last=_flag(env, ENV_CHANNELS_LAST, True),
            compile=_flag(env, ENV_COMPILE, False),
        )

    def dtype_for(self, device: Device) -> torch.dtype:
        if self.precision is not None:
            return PRECISIONS[self.precision]
        return torch.float32 if device.kind == "cpu" else torch.float16


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = env.get(name)
    if text is None:
        return default
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise StartupError(f"{name}={text!r}: expected 1/0, true/false, yes/no or on/off")


# --------------------------------------------------------------------------- devices


def torch_device(device: Device) -> torch.device:
    """The torch device for ``device``, after checking it exists. Imports ``torch_npu`` for npu devices.
    Raises :class:`StartupError` naming the device."""
    if device.kind == "cpu":
        return torch.device("cpu")
    if device.kind == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise StartupError(
                f"device {device}: torch {torch.__version__} ({build}) sees no CUDA GPU; install a CUDA build "
                "of torch, check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use devices = ['cpu']"
            )
        count = torch.cuda.device_count()
        if device.index >= count:
            raise StartupError(f"device {device}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", device.index)
    if device.kind == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the 'npu' device type with torch)
        except ImportError as exc:
            raise StartupError(
                f"device {device}: the torch backend reaches Ascend NPUs through torch_npu, which is not "
                f"installed ({exc}); install the torch_npu build matching torch {torch.__version__} and the "
                "CANN toolkit, or use backend = 'acl' with an .om model"
            ) from exc
        npu = getattr(torch, "npu", None)
        if npu is None or not npu.is_available():
            raise StartupError(f"device {device}: torch_npu is installed but sees no NPU (check npu-smi and CANN)")
        count = npu.device_count()
        if device.index >= count:
            raise StartupError(f"device {device}: only {count} NPU(s) visible (npu:0..npu:{count - 1})")
        return torch.device("npu", device.index)
    raise StartupError(f"device {device}: the torch backend runs on cpu, cuda:N or npu:N devices")


# --------------------------------------------------------------------------- models


def load_model(model: ModelSpec) -> torch.nn.Module:
    """The model of ``model`` on the CPU, in eval mode. Raises :class:`StartupError` naming the file."""
    path = Path(model.path)
    if not path.is_file():
        raise StartupError(f"[model.path] no such model file: {path}")
    fmt = model.format
    if fmt == "state-dict":
        return _state_dict_model(model, path)
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in newer torch, still supported
                warnings.simplefilter("ignore", DeprecationWarning)
                net: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as exc:
            raise StartupError(f"[model.path] cannot load TorchScript model {path}: {first_line(exc)}") from exc
        return net.eval()
    if fmt == "torch-export":
        try:
            program = torch.export.load(str(path))
            net = program.module()
        except Exception as exc:  # torch.export raises a variety of types on bad archives
            raise StartupError(f"[model.path] cannot load torch.export program {path}: {first_line(exc)}") from exc
        return _export_eval(net)
    raise StartupError(f"[model.format] the torch backend runs torchscript, torch-export or state-dict, not {fmt!r}")


def _export_eval(net: torch.nn.Module) -> torch.nn.Module:
    # exported modules refuse .eval() (their train/eval behaviour is fixed at export time)
    try:
        return net.eval()
    except NotImplementedError:
        return net


def _state_dict_model(model: ModelSpec, path: Path) -> torch.nn.Module:
    from ..models import lite0_torch

    arch = model.arch
    if not arch:
        raise StartupError(
            f"[model.arch] {path.name} is a state dict: name its architecture, e.g. arch = 'resnet50' "
            "(a torchvision model) or 'efficientnet_lite0'"
        )
    if arch == "efficientnet_lite0":
        return lite0_torch.load(path, num_classes=model.num_classes)
    try:
        import torchvision
    except ImportError as exc:
        raise StartupError(
            f"[model.arch] {arch!r} is a torchvision architecture, but torchvision is not installed ({exc}); "
            "install the torchvision build matching torch, or export the model to TorchScript (.pt)"
        ) from exc
    try:
        net = torchvision.models.get_model(arch, weights=None, num_classes=model.num_classes)
    except (ValueError, KeyError, TypeError) as exc:
        raise StartupError(
            f"[model.arch] torchvision has no architecture {arch!r} ({first_line(exc)}); "
            "see torchvision.models.list_models()"
        ) from exc
    lite0_torch.load_into(net, lite0_torch.load_state_dict_file(path), path, arch)
    return net.eval()


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor of a model's output: a tensor, or the first of a tuple/list, or a dict's
    ``logits`` (else its first value)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and out:
        value = out.get("logits", next(iter(out.values())))
        if isinstance(value, torch.Tensor):
            return value
    raise BackendError(f"the model returned {type(out).__name__}, expected a logits tensor")
