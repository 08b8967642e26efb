"""ModelConfig (manifest) + backend -> ModelSpec, resolved once: manifest > model default > constants."""

from __future__ import annotations

from pathlib import Path

from ..errors import StartupError
from ..manifest import ModelConfig
from ..preprocess import Preprocess
from .spec import ModelSpec, file_sha256, imagenet_labels, load_labels

# the default model's preprocessing: resize 256 (224/0.875) bilinear, crop 224, (x-127)/128
LITE0_PREPROCESS = Preprocess(size=224, resize=256, mean=(127.0,) * 3, std=(128.0,) * 3)

TORCHVISION_PREPROCESS = Preprocess(size=224, resize=256, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def file_identity(path: Path) -> str:
    """sha256 of a file's content, first 16 hex digits."""
    return file_sha256(path)[:16]


def _preprocess(cfg: ModelConfig, default: Preprocess) -> Preprocess:
    size = cfg.input_size or default.size
    resize = cfg.resize or (default.resize if cfg.input_size is None else round(size / 0.875))
    return Preprocess(
        size=size,
        resize=resize,
        mean=cfg.mean or default.mean,
        std=cfg.std or default.std,
        layout=cfg.layout or default.layout,
        dtype=cfg.dtype or default.dtype,
        interpolation=cfg.interpolation or default.interpolation,
    )


def resolve_model(cfg: ModelConfig, backend: str, *, build: bool = True) -> ModelSpec:
    """The model a job runs. The default model under onnxruntime is converted to ONNX once and cached
    (:func:`.efficientnet_lite0.ensure_onnx`; ``ASCEND_BATCH_CACHE``). ``build=False`` skips that
    conversion and writes nothing (``validate``): ``path`` is then the weights, the identity is the same."""
    if cfg.path is None:
        return _builtin(cfg, backend, build)
    labels = _labels(cfg, None)
    if cfg.arch and cfg.arch != "efficientnet_lite0":
        default = TORCHVISION_PREPROCESS  # torchvision weights expect ImageNet mean/std
    else:
        default = Preprocess(std=(1.0, 1.0, 1.0), mean=(0.0, 0.0, 0.0))
    pp = _preprocess(cfg, default)
    return ModelSpec(
        name=cfg.name or cfg.path.stem,
        path=cfg.path,
        format=cfg.format or "onnx",
        preprocess=pp,
        labels=labels,
        identity=file_identity(cfg.path),
        arch=cfg.arch,
        weights=cfg.weights,
        aipp=cfg.aipp,
    )


def _labels(cfg: ModelConfig, default: tuple[str, ...] | None) -> tuple[str, ...]:
    if cfg.labels is not None:
        try:
            return load_labels(cfg.labels)
        except (OSError, ValueError) as exc:
            raise StartupError(f"[model.labels] cannot read {cfg.labels}: {exc}") from exc
    return default if default is not None else imagenet_labels()


def _builtin(cfg: ModelConfig, backend: str, build: bool) -> ModelSpec:
    name = cfg.name or "efficientnet_lite0"
    if name != "efficientnet_lite0":
        raise StartupError(f"[model.name] unknown built-in model {name!r}")
    from . import efficientnet_lite0 as lite0

    weights = cfg.weights or lite0.default_weights_path()
    pp = _preprocess(cfg, LITE0_PREPROCESS)
    sha = file_sha256(weights)
    identity = f"{name}-{sha[:16]}"
    labels = _labels(cfg, imagenet_labels())
    if backend == "torch":
        return ModelSpec(name, weights, "state-dict", pp, labels, identity, arch=name, weights=weights)
    if backend == "acl":
        raise StartupError("[model.path] the acl backend needs an .om model file (see the README: ATC conversion)")
    path = lite0.ensure_onnx(weights, weights_sha=sha) if build else weights
    return ModelSpec(name, path, "onnx", pp, labels, identity, arch=name, weights=weights)
