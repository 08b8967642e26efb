"""What the manifest allows per backend, declared once: the ``[runtime]`` keys only some backends read,
the device kinds each runs on, the model formats it runs (from :data:`~ascend_batch.backends.base.BACKENDS`)
and what it requires of ``[model]``. The readers in :mod:`.tables` consult :func:`rules_for` instead of
testing backend names.

Adding a backend: its :class:`~ascend_batch.backends.base.BackendEntry` in ``BACKENDS`` and its
:class:`BackendRules` here (``tests/test_manifest_rules.py`` fails until both exist). Adding a
backend-specific key: a :class:`RuntimeKey`, a field of the same name in ``RuntimeConfig`` (its default),
and the key in the ``keys`` of each backend that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import BACKENDS, DEVICE_KINDS, BackendEntry, is_plugin
from ..models.spec import MODEL_FORMATS

# model.format when the manifest leaves it out, by model.path's suffix
FORMAT_BY_SUFFIX = {".onnx": "onnx", ".om": "om", ".pt": "torchscript", ".pt2": "torch-export", ".pth": "state-dict"}


@dataclass(frozen=True)
class RuntimeKey:
    """A ``[runtime]`` key that only some backends read. Its default is the ``RuntimeConfig`` field of
    the same name. ``option``: passed to the backend's constructor (``RuntimeConfig.backend_options``);
    otherwise the runner reads it."""

    name: str
    kind: type  # bool or str
    choices: tuple[str, ...] = ()  # the allowed values of a str key
    option: bool = True

    def allows(self, value: object) -> bool:
        return not self.choices or value in self.choices

    @property
    def expected(self) -> str:
        return f"one of {', '.join(self.choices)}" if self.choices else "true or false"


PRECISION = RuntimeKey("precision", str, choices=("fp32", "fp16", "bf16"))
CHANNELS_LAST = RuntimeKey("channels_last", bool)
COMPILE = RuntimeKey("compile", bool)
# the device decode stage (worker): nvJPEG on CUDA (torch), DVPP on Ascend (acl, AIPP models)
DEVICE_DECODE = RuntimeKey("device_decode", bool, option=False)
DEVICE_DECODE_ALIAS = "gpu_decode"  # its earlier name, still accepted
RUNTIME_KEYS = (PRECISION, CHANNELS_LAST, COMPILE, DEVICE_DECODE)


@dataclass(frozen=True)
class BackendRules:
    """One backend as the manifest sees it. ``device_kinds``: the kinds its devices may have, and
    ``wrong_device``: the message when one has another; ``needs_model_path``: the message when
    ``model.path`` is missing (the backend has no built-in model), or None."""

    entry: BackendEntry
    keys: tuple[RuntimeKey, ...] = ()
    device_kinds: tuple[str, ...] = DEVICE_KINDS
    wrong_device: str = ""
    needs_model_path: str | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def default_device_kind(self) -> str:
        return self.entry.default_device_kind

    @property
    def formats(self) -> tuple[str, ...]:
        return self.entry.formats


BACKEND_RULES: dict[str, BackendRules] = {
    r.name: r
    for r in (
        BackendRules(
            BACKENDS["onnxruntime"],
            device_kinds=("cpu", "cuda"),
            wrong_device="onnxruntime runs on 'cpu:N' or 'cuda:N', not NPUs (use backend = 'acl')",
        ),
        BackendRules(
            BACKENDS["acl"],
            device_kinds=("npu",),
            wrong_device="the acl backend runs on NPUs: use indices like [0, 1] or 'npu:0'",
            needs_model_path="the acl backend needs an .om model: set model.path (convert with ATC, see the README)",
            keys=(DEVICE_DECODE,),
        ),
        BackendRules(BACKENDS["torch"], keys=(PRECISION, CHANNELS_LAST, COMPILE, DEVICE_DECODE)),
    )
}

# a plugin ("package.module:Class") is trusted with every key, device kind and model format
PLUGIN_RULES = BackendRules(BackendEntry("plugin", "", "", "cpu", MODEL_FORMATS), keys=RUNTIME_KEYS)


def rules_for(backend: str) -> BackendRules:
    """The rules of a built-in backend or a plugin; ``KeyError`` for an unknown name."""
    return PLUGIN_RULES if is_plugin(backend) else BACKEND_RULES[backend]


def readers_of(key: RuntimeKey) -> list[str]:
    """The built-in backends that read ``key``."""
    return [name for name, rules in BACKEND_RULES.items() if key in rules.keys]
