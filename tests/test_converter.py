"""The default model's converter: restricted legacy-torch reader, ONNX graph, cache."""

from __future__ import annotations

import pickle
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ascend_batch.errors import StartupError
from ascend_batch.models import efficientnet_lite0 as lite0
from ascend_batch.models.torch_pickle import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    TorchFormatError,
    UnsafePickleError,
    load_legacy_state_dict,
)

SYS_INFO = {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"long": 4}}


# --------------------------------------------------------------------------- hand-written legacy files


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(items: Sequence[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _header() -> bytes:
    return b"".join(pickle.dumps(obj, protocol=2) for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO))


def _tensor(key: str, numel: int, offset: int, size: Sequence[int], stride: Sequence[int]) -> bytes:
    """Opcodes of ``_rebuild_tensor_v2(<FloatStorage key>, offset, size, stride, False, OrderedDict())``."""
    pid = _tuple([_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _int(numel), b"N"])
    hooks = _global("collections", "OrderedDict") + b")R"
    args = [pid + b"Q", _int(offset), _tuple([_int(n) for n in size]), _tuple([_int(s) for s in stride])]
    return _global("torch._utils", "_rebuild_tensor_v2") + _tuple([*args, b"\x89", hooks]) + b"R"


def _legacy_file(
    path: Path, tensors: dict[str, bytes], storages: dict[str, np.ndarray], header: bytes | None = None
) -> Path:
    """A legacy torch file: header pickles, an OrderedDict of ``tensors`` opcodes, then the storages."""
    items = b"".join(_str(name) + ops for name, ops in tensors.items())
    state = b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + items + b"u."
    body = [header if header is not None else _header(), state, pickle.dumps(list(storages), protocol=2)]
    for data in storages.values():
        body.append(struct.pack("<q", data.size) + data.astype("<f4").tobytes())
    path.write_bytes(b"".join(body))
    return path


def _evil_state(module: str, name: str, arg: str) -> bytes:
    """A state-dict pickle that calls ``module.name(arg)`` if loaded with plain pickle."""
    return b"\x80\x02" + _global(module, name) + _str(arg) + b"\x85R."


@pytest.fixture(scope="module")
def weights() -> Path:
    return lite0.default_weights_path()


@pytest.fixture(scope="module")
def state_dict(weights: Path) -> dict[str, np.ndarray]:
    return load_legacy_state_dict(weights)


@pytest.fixture(scope="module")
def full_model(state_dict: dict[str, np.ndarray]) -> onnx.ModelProto:
    return lite0.build_onnx(state_dict)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- restricted unpickler


@pytest.mark.parametrize(
    ("module", "name", "code"),
    [
        ("os", "system", "touch {marker}"),
        ("posix", "system", "touch {marker}"),
        ("builtins", "eval", "open({marker!r}, 'w').close()"),
        ("builtins", "exec", "open({marker!r}, 'w').close()"),
    ],
)
def test_refuses_code_execution_in_state_dict(tmp_path: Path, module: str, name: str, code: str) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_state(module, name, code.format(marker=str(marker)))
    path = tmp_path / "evil.pth"
    path.write_bytes(_header() + evil + pickle.dumps([], protocol=2))
    with pytest.raises(UnsafePickleError, match=rf"{module}\.{name}"):
        load_legacy_state_dict(path)
    assert not marker.exists()


def test_refuses_code_execution_in_header(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_evil_state("os", "system", f"touch {marker}"))
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        load_legacy_state_dict(path)
    assert not marker.exists()


def test_refuses_unknown_torch_global(tmp_path: Path) -> None:
    tensors = {"w": _global("torch.nn.modules.linear", "Linear") + b")R"}
    path = _legacy_file(tmp_path / "module.pth", tensors, {})
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules\.linear\.Linear"):
        load_legacy_state_dict(path)


def test_refuses_zip_format(tmp_path: Path) -> None:
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(TorchFormatError, match="zip-format"):
        load_legacy_state_dict(path)


def test_refuses_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    header = b"".join(pickle.dumps(x, protocol=2) for x in (12345, PROTOCOL_VERSION, SYS_INFO))
    _legacy_file(path, {}, {}, header=header)
    with pytest.raises(TorchFormatError, match="magic"):
        load_legacy_state_dict(path)


def test_refuses_truncated_storage(tmp_path: Path) -> None:
    path = _legacy_file(tmp_path / "t.pth", {"w": _tensor("0", 6, 0, [6], [1])}, {"0": np.arange(6.0)})
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(TorchFormatError, match="truncated"):
        load_legacy_state_dict(path)


def test_refuses_tensor_outside_its_storage(tmp_path: Path) -> None:
    path = _legacy_file(tmp_path / "oob.pth", {"w": _tensor("0", 4, 2, [2, 2], [2, 1])}, {"0": np.arange(4.0)})
    with pytest.raises(TorchFormatError, match="runs past"):
        load_legacy_state_dict(path)


def test_strided_views_and_shared_storage(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.float32)
    tensors = {
        "matrix": _tensor("a", 12, 0, [3, 4], [4, 1]),
        "transposed": _tensor("a", 12, 0, [4, 3], [1, 4]),  # same storage, other strides
        "offset": _tensor("a", 12, 5, [2, 2], [3, 1]),
        "scalar": _tensor("b", 1, 0, [], []),
    }
    path = _legacy_file(tmp_path / "views.pth", tensors, {"a": data, "b": np.array([7.0])})
    sd = load_legacy_state_dict(path)
    assert list(sd) == ["matrix", "transposed", "offset", "scalar"]
    np.testing.assert_array_equal(sd["matrix"], data.reshape(3, 4))
    np.testing.assert_array_equal(sd["transposed"], data.reshape(3, 4).T)
    np.testing.assert_array_equal(sd["offset"], [[5, 6], [8, 9]])
    assert sd["scalar"].shape == () and sd["scalar"] == 7.0
    assert all(a.flags.c_contiguous and a.flags.writeable and a.dtype == np.float32 for a in sd.values())


def test_loads_packaged_weights(state_dict: dict[str, np.ndarray]) -> None:
    assert len(state_dict) == 296
    assert next(iter(state_dict)) == "_conv_stem.weight"
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    assert state_dict["_fc.bias"].dtype == np.float32
    assert np.isfinite(state_dict["_bn1.running_var"]).all()


# --------------------------------------------------------------------------- graph


def test_block_structure(state_dict: dict[str, np.ndarray]) -> None:
    specs = lite0.block_specs(state_dict)
    assert len(specs) == 16
    assert [s.stride for s in specs] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert [s.kernel for s in specs][:5] == [3, 3, 3, 5, 5]
    assert not specs[0].has_expand and specs[1].has_expand
    assert [s.index for s in specs if s.residual] == [2, 4, 6, 7, 9, 10, 12, 13, 14]


def _reference_stem(x: np.ndarray, sd: dict[str, np.ndarray]) -> np.ndarray:
    """Conv 3x3 stride 2 with TensorFlow SAME padding, BatchNorm (eps 1e-3), ReLU6: plain numpy."""
    w = sd["_conv_stem.weight"].astype(np.float64)
    k, stride = w.shape[2], 2
    size = x.shape[2]
    out = -(-size // stride)
    pad = max((out - 1) * stride + k - size, 0)
    before = pad // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (before, pad - before), (before, pad - before)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.einsum("nchwij,ocij->nohw", windows, w)
    gamma, beta, mean, var = (
        sd[f"_bn0.{n}"][None, :, None, None] for n in ("weight", "bias", "running_mean", "running_var")
    )
    y = (y - mean) / np.sqrt(var + 1e-3) * gamma + beta
    return np.clip(y, 0.0, 6.0)


def test_stem_matches_numpy_reference(state_dict: dict[str, np.ndarray]) -> None:
    x = np.random.default_rng(0).normal(0.0, 1.0, (2, 3, 224, 224)).astype(np.float32)
    (got,) = _session(lite0.build_stem_onnx(state_dict)).run(["stem"], {"input": x})
    want = _reference_stem(x, state_dict)
    assert got.shape == (2, 32, 112, 112)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_full_model_dynamic_batch(full_model: onnx.ModelProto) -> None:
    inp, out = full_model.graph.input[0], full_model.graph.output[0]
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "N"
    assert full_model.opset_import[0].version == 17
    sess = _session(full_model)
    rng = np.random.default_rng(1)
    for batch in (1, 2, 3):
        x = rng.normal(0.0, 1.0, (batch, 3, 224, 224)).astype(np.float32)
        (logits,) = sess.run(["logits"], {"input": x})
        assert logits.shape == (batch, 1000)
        assert np.isfinite(logits).all()


def test_build_rejects_foreign_state_dict(state_dict: dict[str, np.ndarray]) -> None:
    partial = {k: v for k, v in state_dict.items() if k != "_bn1.running_var"}
    with pytest.raises(ValueError, match=r"_bn1\.running_var"):
        lite0.build_onnx(partial)


# --------------------------------------------------------------------------- cache


def test_ensure_onnx_caches_and_rebuilds_corrupt(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = lite0.ensure_onnx(weights, cache_dir=tmp_path)
    assert path.parent == tmp_path and path.name.startswith("efficientnet_lite0-") and path.suffix == ".onnx"
    onnx.checker.check_model(onnx.load(str(path)))
    mtime = path.stat().st_mtime_ns

    def no_build(_: dict[str, np.ndarray]) -> onnx.ModelProto:
        raise AssertionError("rebuilt a valid cache")

    with monkeypatch.context() as m:
        m.setattr(lite0, "build_onnx", no_build)
        assert lite0.ensure_onnx(weights, cache_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime

    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert lite0.ensure_onnx(weights, cache_dir=tmp_path) == path
    assert path.read_bytes() == good
    path.unlink()  # missing
    assert lite0.ensure_onnx(weights, cache_dir=tmp_path) == path
    assert path.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_ensure_onnx_concurrent(weights: Path, tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(lite0.ensure_onnx(weights, cache_dir=tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    onnx.checker.check_model(onnx.load(str(results[0])))


def test_ensure_onnx_env_cache_dir(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASCEND_BATCH_CACHE", str(tmp_path / "env"))
    assert lite0.default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("ASCEND_BATCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lite0.default_cache_dir() == tmp_path / "xdg" / "ascend-batch"


def test_ensure_onnx_bad_weights(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(StartupError, match="zip-format"):
        lite0.ensure_onnx(bad, cache_dir=tmp_path / "cache")
    with pytest.raises(StartupError, match="cannot read"):
        lite0.ensure_onnx(tmp_path / "missing.pth", cache_dir=tmp_path / "cache")
