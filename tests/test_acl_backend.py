"""The acl backend against the emulated pyACL in tests/fakes/acl (an '.om' there is an ONNX file).

Sessions: results equal onnxruntime's on the same model, static and dynamic batch, NCHW/NHWC,
float32/float16, one and two devices, in this process and in two spawned worker processes; a
failure of each acl call gives an error naming the call, the code and the device, and releases
exactly what was acquired, in reverse order; manifest mismatches are refused naming the key.
Jobs (the real CLI, workers on npu:0 and npu:1): same top-5 as an onnxruntime run, no leaks in any
worker process, injected failures leave the other units complete and a rerun resumes.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pandas as pd
import pytest
from helpers import REPO, cli, labels_file, make_images, tiny_onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ascend_batch.backends.acl import ACL_PROCESS, ERROR_NAMES, AclBackend, AclSession
from ascend_batch.backends.base import Device
from ascend_batch.backends.onnx import OnnxBackend
from ascend_batch.errors import BackendError, StartupError
from ascend_batch.models.spec import ModelSpec
from ascend_batch.preprocess import Preprocess, decode

FAKES = Path(__file__).parent / "fakes"
CLASSES = 10
LABELS = tuple(f"class{i}" for i in range(CLASSES))
PP = Preprocess(size=32, resize=36, mean=(120.0,) * 3, std=(60.0,) * 3)
NPU0, NPU1 = Device("npu", 0), Device("npu", 1)

# what each acquiring call is undone by
RELEASE_OF = {
    "acl.init": "acl.finalize",
    "acl.rt.set_device": "acl.rt.reset_device",
    "acl.rt.create_context": "acl.rt.destroy_context",
    "acl.rt.create_stream": "acl.rt.destroy_stream",
    "acl.mdl.create_desc": "acl.mdl.destroy_desc",
    "acl.mdl.load_from_file": "acl.mdl.unload",
    "acl.rt.malloc": "acl.rt.free",
    "acl.mdl.create_dataset": "acl.mdl.destroy_dataset",
    "acl.create_data_buffer": "acl.destroy_data_buffer",
    "acl.rt.malloc_host": "acl.rt.free_host",
}
RELEASES = set(RELEASE_OF.values())


# --- models --------------------------------------------------------------------------------
def build_model(
    path: Path, batch: int | str, *, layout: str = "NCHW", dtype: int = TensorProto.FLOAT, fp16_logits: bool = False
) -> Path:
    """A tiny classifier: [cast] [transpose] conv3x3 -> relu -> global pool -> gemm to 10 logits [-> fp16]."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(8, CLASSES)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=(CLASSES,)).astype(np.float32), "b2"),
    ]
    nodes, x = [], "input"
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["cast"], to=TensorProto.FLOAT))
        x = "cast"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [
        helper.make_node("Conv", [x, "w1"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits32" if fp16_logits else "logits"]),
    ]
    if fp16_logits:
        nodes.append(helper.make_node("Cast", ["logits32"], ["logits"], to=TensorProto.FLOAT16))
    shape = [batch, 3, 32, 32] if layout == "NCHW" else [batch, 32, 32, 3]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", dtype, shape)],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT16 if fp16_logits else TensorProto.FLOAT, [batch, CLASSES]
            )
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("om")
    out = {
        "static": build_model(d / "static4.om", 4),
        "dynamic": build_model(d / "dynamic.om", "N"),
        "nhwc": build_model(d / "nhwc.om", 2, layout="NHWC"),
        "fp16": build_model(d / "fp16.om", 2, dtype=TensorProto.FLOAT16),
        "fp16-logits": build_model(d / "fp16logits.om", 4, fp16_logits=True),
    }
    (d / "dynamic.om.json").write_text(json.dumps({"dynamic_batch": [1, 2, 4, 8]}))
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Eleven generated images, decoded and preprocessed as a worker would (NCHW float32)."""
    rng = np.random.default_rng(3)
    arrays = []
    for i in range(11):
        img = Image.fromarray(rng.integers(0, 255, size=(40 + i, 50, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        arrays.append(decode(buf.getvalue(), PP).array)
    return np.stack(arrays)


def spec(path: Path, pp: Preprocess = PP, labels: tuple[str, ...] = LABELS) -> ModelSpec:
    return ModelSpec(path.stem, path, "om", pp, labels, "test")


def reference(path: Path, batch: np.ndarray, pp: Preprocess = PP) -> np.ndarray:
    """onnxruntime's logits for the same model file, batch by batch."""
    session = OnnxBackend().open(Device("cpu", 0), spec(path, pp), batch_size=8, threads=1)
    try:
        step = session.max_batch
        return np.concatenate([session.infer(batch[i : i + step]) for i in range(0, len(batch), step)])
    finally:
        session.close()


def top5(logits: np.ndarray) -> np.ndarray:
    return np.argsort(-logits, axis=1, kind="stable")[:, :5]


def run_all(session: AclSession, batch: np.ndarray) -> np.ndarray:
    step = session.max_batch
    return np.concatenate([session.infer(batch[i : i + step]) for i in range(0, len(batch), step)])


# --- the fake ------------------------------------------------------------------------------
@pytest.fixture
def acl(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The emulated pyACL, fresh for each test; afterwards nothing may be left live or misused."""
    for var in ("ACL_FAKE_FAIL", "ACL_FAKE_HIDE", "ACL_FAKE_REPORT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(FAKES))
    import acl as fake

    fake._fake.reset()
    yield fake
    try:
        live = {k: v for k, v in fake._fake.live().items() if v}
        assert not live, f"left live: {live}"
        assert not fake._fake.misuse(), fake._fake.misuse()
    finally:
        for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
            del sys.modules[name]
        # a failed test may leave a session open: the next one starts from a clean process state
        ACL_PROCESS.users, ACL_PROCESS.owned = 0, False
        ACL_PROCESS.sessions.clear()


def released_after(calls: list, start: int) -> list[str]:
    return [c.name for c in calls[start:] if c.name in RELEASES]


def acquired_before(calls: list, stop: int | None = None) -> list[str]:
    return [c.name for c in calls[:stop] if c.name in RELEASE_OF and c.ret == 0 and not c.injected]


# --- results -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("api", ["numpy", "bytes"])
def test_same_logits_and_top5_as_onnxruntime(
    acl: ModuleType, models: dict[str, Path], images: np.ndarray, kind: str, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CANN < 6 has numpy_to_ptr/ptr_to_numpy, CANN >= 6 bytes_to_ptr/ptr_to_bytes: either must work
    hide = ("bytes_to_ptr", "ptr_to_bytes") if api == "numpy" else ("numpy_to_ptr", "ptr_to_numpy")
    for name in hide:
        monkeypatch.delattr(acl.util, name)
    with AclBackend().open(NPU0, spec(models[kind]), batch_size=8, threads=0) as session:
        assert session.max_batch == (4 if kind == "static" else 8)
        assert session.input_shape == (session.max_batch, 3, 32, 32)
        got = run_all(session, images)  # 11 images: the last batch is partial (padded / smaller gear)
        one = session.infer(images[:1])
    want = reference(models[kind], images)
    assert got.dtype == np.float32 and got.shape == (len(images), CLASSES)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(top5(got), top5(want))
    np.testing.assert_allclose(one, want[:1], rtol=1e-5, atol=1e-5)
    used = {c.name for c in acl._fake.calls() if c.name.startswith("acl.util.")}
    assert used == (
        {"acl.util.numpy_to_ptr", "acl.util.ptr_to_numpy"}
        if api == "numpy"
        else {"acl.util.bytes_to_ptr", "acl.util.ptr_to_bytes"}
    )


def test_sync_execute(acl: ModuleType, models: dict[str, Path], images: np.ndarray) -> None:
    with AclBackend(execute="sync").open(NPU0, spec(models["static"]), batch_size=4, threads=0) as session:
        got = run_all(session, images)
    np.testing.assert_allclose(got, reference(models["static"], images), rtol=1e-5, atol=1e-5)
    names = [c.name for c in acl._fake.calls()]
    assert "acl.mdl.execute" in names and "acl.mdl.execute_async" not in names


@pytest.mark.parametrize("kind", ["nhwc", "fp16", "fp16-logits"])
def test_nhwc_and_float16_models(acl: ModuleType, models: dict[str, Path], images: np.ndarray, kind: str) -> None:
    pp, batch = PP, images
    if kind == "nhwc":
        pp, batch = (
            Preprocess(size=32, resize=36, mean=PP.mean, std=PP.std, layout="NHWC"),
            images.transpose(0, 2, 3, 1),
        )
    elif kind == "fp16":
        pp, batch = Preprocess(size=32, resize=36, mean=PP.mean, std=PP.std, dtype="float16"), images.astype(np.float16)
    with AclBackend().open(NPU0, spec(models[kind], pp), batch_size=8, threads=0) as session:
        got = run_all(session, np.ascontiguousarray(batch))
    assert got.dtype == np.float32
    want = reference(models[kind], np.ascontiguousarray(batch), pp)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(top5(got), top5(want))


def test_two_devices_in_one_process(acl: ModuleType, models: dict[str, Path], images: np.ndarray) -> None:
    want = reference(models["dynamic"], images)
    s0 = AclBackend().open(NPU0, spec(models["static"]), batch_size=4, threads=0)
    s1 = AclBackend().open(NPU1, spec(models["dynamic"]), batch_size=4, threads=0)
    try:
        for i in range(0, len(images), 4):  # interleaved: each infer makes its own context current
            np.testing.assert_allclose(s0.infer(images[i : i + 4]), want[i : i + 4], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(s1.infer(images[i : i + 4]), want[i : i + 4], rtol=1e-5, atol=1e-5)
        assert {dev for dev, _ in acl._fake.executions()} == {0, 1}
        s0.close()
        assert acl._fake.live()["initialized"] == 1  # npu:1 still open: no finalize yet
        np.testing.assert_allclose(s1.infer(images[:3]), want[:3], rtol=1e-5, atol=1e-5)
    finally:
        s0.close()
        s1.close()
    names = [c.name for c in acl._fake.calls()]
    assert names.count("acl.init") == 1 and names.count("acl.finalize") == 1 and names[-1] == "acl.finalize"


# --- batches and gears ---------------------------------------------------------------------
def test_dynamic_batch_picks_smallest_gear(acl: ModuleType, models: dict[str, Path], images: np.ndarray) -> None:
    with AclBackend().open(NPU0, spec(models["dynamic"]), batch_size=8, threads=0) as session:
        for n in (1, 3, 5, 4, 4, 2, 8):
            session.infer(images[:n])
        with pytest.raises(BackendError, match=r"1\.\.8"):
            session.infer(np.zeros((9, 3, 32, 32), np.float32))
    assert [batch for _, batch in acl._fake.executions()] == [1, 4, 8, 4, 4, 2, 8]
    # the gear is set only when it changes; the ascend_mbatch_shape_data buffer is in the dataset
    assert [c.name for c in acl._fake.calls()].count("acl.mdl.set_dynamic_batch_size") == 6


@pytest.mark.parametrize(("batch_size", "expected"), [(1, 1), (3, 4), (8, 8), (100, 8)])
def test_dynamic_max_batch_from_gears(acl: ModuleType, models: dict[str, Path], batch_size: int, expected: int) -> None:
    with AclBackend().open(NPU0, spec(models["dynamic"]), batch_size=batch_size, threads=0) as session:
        assert session.max_batch == expected


def test_static_batch_pads(acl: ModuleType, models: dict[str, Path], images: np.ndarray) -> None:
    with AclBackend().open(NPU0, spec(models["static"]), batch_size=32, threads=0) as session:
        assert session.max_batch == 4  # the compiled batch, whatever runtime.batch_size says
        for n in (1, 2, 3):
            assert session.infer(images[:n]).shape == (n, CLASSES)
    assert [batch for _, batch in acl._fake.executions()] == [4, 4, 4]


# --- manifest checks -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "pp", "labels", "key", "detail"),
    [
        ("static", Preprocess(size=64, resize=72), LABELS, "model.input_size", "32x32"),
        ("static", Preprocess(size=32, resize=36, layout="NHWC"), LABELS, "model.layout", "'NCHW'"),
        ("nhwc", Preprocess(size=32, resize=36), LABELS, "model.layout", "'NHWC'"),
        ("fp16", Preprocess(size=32, resize=36), LABELS, "model.dtype", "'float16'"),
        ("static", Preprocess(size=32, resize=36, dtype="uint8"), LABELS, "model.dtype", "'float32'"),
        ("static", PP, tuple(str(i) for i in range(1000)), "model.labels", "10 classes"),
    ],
)
def test_manifest_mismatch_is_refused(
    acl: ModuleType, models: dict[str, Path], kind: str, pp: Preprocess, labels: tuple, key: str, detail: str
) -> None:
    with pytest.raises(StartupError) as err:
        AclBackend().open(NPU0, spec(models[kind], pp, labels), batch_size=4, threads=0)
    assert f"[{key}]" in str(err.value) and detail in str(err.value), str(err.value)
    calls = acl._fake.calls()
    assert released_after(calls, 0) == [RELEASE_OF[a] for a in reversed(acquired_before(calls))]


def test_dtype_mismatch_found_from_byte_size_without_type_api(
    acl: ModuleType, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # older CANN without get_input_data_type/get_input_format: the input's byte size still tells
    monkeypatch.delattr(acl.mdl, "get_input_data_type")
    monkeypatch.delattr(acl.mdl, "get_input_format")
    with pytest.raises(StartupError, match=r"\[model\.dtype\].*float16"):
        AclBackend().open(NPU0, spec(models["fp16"]), batch_size=4, threads=0)


# --- failures ------------------------------------------------------------------------------
OPEN_FAILURES = [
    ("init", "acl.init", 500001),
    ("rt.set_device", "acl.rt.set_device", 507033),
    ("rt.create_context", "acl.rt.create_context", 207005),
    ("rt.create_stream", "acl.rt.create_stream", 207008),
    ("mdl.load_from_file", "acl.mdl.load_from_file", 545001),
    ("mdl.get_desc", "acl.mdl.get_desc", 500000),
    ("rt.malloc:1", "acl.rt.malloc", 207001),
    ("rt.malloc:3", "acl.rt.malloc", 207001),
    ("mdl.create_dataset:2", "acl.mdl.create_dataset", "null handle"),
    ("create_data_buffer:3", "acl.create_data_buffer", "null handle"),
    ("mdl.add_dataset_buffer:2", "acl.mdl.add_dataset_buffer", 500000),
    ("rt.malloc_host", "acl.rt.malloc_host", 207001),
    ("mdl.get_dynamic_batch=100000", "acl.mdl.get_dynamic_batch", 100000),
]


@pytest.mark.parametrize(("fail", "call", "code"), OPEN_FAILURES)
def test_failure_while_opening_releases_what_was_acquired(
    acl: ModuleType, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, fail: str, call: str, code: object
) -> None:
    monkeypatch.setenv("ACL_FAKE_FAIL", fail)
    with pytest.raises(StartupError) as err:
        AclBackend().open(NPU1, spec(models["dynamic"]), batch_size=8, threads=0)
    message = str(err.value)
    assert call in message and str(code) in message and "npu:1" in message, message
    calls = acl._fake.calls()
    failed = next(i for i, c in enumerate(calls) if c.injected)
    assert calls[failed].name == call
    # exactly what was acquired before the failure is released, newest first
    assert released_after(calls, failed) == [RELEASE_OF[a] for a in reversed(acquired_before(calls, failed))]
    assert acl._fake.report()["finalized"] == (call != "acl.init")
    # the process can open a session again afterwards
    monkeypatch.delenv("ACL_FAKE_FAIL")
    AclBackend().open(NPU1, spec(models["dynamic"]), batch_size=8, threads=0).close()


INFER_FAILURES = [
    ("rt.memcpy:1", "acl.rt.memcpy", 507052, "async"),  # host -> device
    ("rt.memcpy:2", "acl.rt.memcpy", 507052, "async"),  # device -> host
    ("mdl.execute_async", "acl.mdl.execute_async", 507011, "async"),
    ("rt.synchronize_stream", "acl.rt.synchronize_stream", 507046, "async"),
    ("mdl.execute", "acl.mdl.execute", 507011, "sync"),
    ("mdl.set_dynamic_batch_size", "acl.mdl.set_dynamic_batch_size", 100000, "async"),
    ("rt.set_context:1=107017", "acl.rt.set_context", 107017, "async"),
]


@pytest.mark.parametrize(("fail", "call", "code", "mode"), INFER_FAILURES)
def test_failure_while_inferring_names_call_and_recovers(
    acl: ModuleType,
    models: dict[str, Path],
    images: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    fail: str,
    call: str,
    code: int,
    mode: str,
) -> None:
    want = reference(models["dynamic"], images[:3])
    session = AclBackend(execute=mode).open(NPU0, spec(models["dynamic"]), batch_size=8, threads=0)
    try:
        monkeypatch.setenv("ACL_FAKE_FAIL", fail)
        with pytest.raises(BackendError) as err:
            session.infer(images[:3])
        assert str(err.value) == f"device npu:0: {call} returned {code} ({ERROR_NAMES[code]})"
        # the next batch works (the gear is set again after a failure)
        np.testing.assert_allclose(session.infer(images[:3]), want, rtol=1e-5, atol=1e-5)
    finally:
        session.close()


def test_failure_on_one_device_only(
    acl: ModuleType, models: dict[str, Path], images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACL_FAKE_FAIL", "mdl.execute_async:2@1")
    with (
        AclBackend().open(NPU0, spec(models["static"]), batch_size=4, threads=0) as s0,
        AclBackend().open(NPU1, spec(models["static"]), batch_size=4, threads=0) as s1,
    ):
        for _ in range(3):
            s0.infer(images[:4])
        s1.infer(images[:4])
        with pytest.raises(BackendError, match=r"npu:1: acl\.mdl\.execute_async returned 507011"):
            s1.infer(images[:4])
    assert acl._fake.report()["injected"] == [{"call": "acl.mdl.execute_async", "nth": 2, "device": 1, "code": 507011}]


def test_failure_while_releasing_is_reported_and_the_rest_released(
    acl: ModuleType, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    session = AclBackend().open(NPU0, spec(models["static"]), batch_size=4, threads=0)
    monkeypatch.setenv("ACL_FAKE_FAIL", "mdl.unload=100011")
    with pytest.raises(BackendError, match=r"acl\.mdl\.unload returned 100011 \(ACL_ERROR_INVALID_MODEL_ID\)"):
        session.close()
    session.close()  # idempotent
    names = [c.name for c in acl._fake.calls()]
    assert names[-4:] == ["acl.rt.destroy_stream", "acl.rt.destroy_context", "acl.rt.reset_device", "acl.finalize"]
    # the model the fake could not unload shows up as a leak at finalize
    assert acl._fake.report()["leaks_at_finalize"] == {"models": 1}
    acl._fake.reset()


# --- lifecycle -----------------------------------------------------------------------------
def test_release_order_is_the_reverse_of_acquisition(acl: ModuleType, models: dict[str, Path]) -> None:
    session = AclBackend().open(NPU0, spec(models["dynamic"]), batch_size=8, threads=0)
    session.infer(np.zeros((2, 3, 32, 32), np.float32))
    start = len(acl._fake.calls())
    session.close()
    session.close()  # idempotent: no second release
    calls = acl._fake.calls()
    released = released_after(calls, start)
    assert released == [RELEASE_OF[a] for a in reversed(acquired_before(calls, start))]
    # the order of the CANN walk-through's release list
    deduped = [name for i, name in enumerate(released) if i == 0 or released[i - 1] != name]
    assert deduped == [
        "acl.rt.free_host",
        "acl.destroy_data_buffer",
        "acl.mdl.destroy_dataset",
        "acl.destroy_data_buffer",
        "acl.mdl.destroy_dataset",
        "acl.rt.free",
        "acl.mdl.unload",
        "acl.mdl.destroy_desc",
        "acl.rt.destroy_stream",
        "acl.rt.destroy_context",
        "acl.rt.reset_device",
        "acl.finalize",
    ]
    # device buffers and datasets are made once per session, not per batch
    acquired = acquired_before(calls)
    assert acquired.count("acl.rt.malloc") == 3  # data input, ascend_mbatch_shape_data, logits
    assert acquired.count("acl.mdl.create_dataset") == 2
    with pytest.raises(BackendError, match="closed"):
        session.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_without_pyacl_open_says_what_to_install(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "acl", None)  # import acl -> ImportError
    with pytest.raises(StartupError, match=r"pyACL.*set_env\.sh"):
        AclBackend().open(NPU0, spec(models["static"]), batch_size=4, threads=0)


def test_importing_the_backend_does_not_import_acl() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), str(Path(__file__).parents[1])])}
    code = "import sys, ascend_batch, ascend_batch.backends.acl; assert 'acl' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_the_fake_enforces_call_order_and_codes(acl: ModuleType, models: dict[str, Path]) -> None:
    assert acl.rt.set_device(0) == 100001  # ACL_ERROR_UNINITIALIZE: set_device before init
    assert acl.rt.malloc(64, 0) == (0, 100001)
    assert acl.init() == 0
    assert acl.init() == 100002  # ACL_ERROR_REPEAT_INITIALIZE
    assert acl.rt.malloc(64, 0) == (0, 107002)  # ACL_ERROR_RT_CONTEXT_NULL: no context yet
    assert acl.mdl.load_from_file(str(models["static"]))[1] == 107002
    assert acl.rt.set_device(99) == 107001  # ACL_ERROR_RT_INVALID_DEVICEID
    assert acl.rt.set_device(0) == 0
    _, ret = acl.rt.create_context(0)
    assert ret == 0
    assert acl.mdl.execute(12345, 0, 0) == 100011  # ACL_ERROR_INVALID_MODEL_ID
    ptr, ret = acl.rt.malloc(64, 0)
    assert ret == 0
    assert acl.rt.memcpy(ptr, 64, ptr, 128, 3) == 107000  # count > dest_max
    assert acl.finalize() == 148051  # ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED
    assert acl._fake.report()["leaks_at_finalize"] == {"devices": 1, "contexts": 1, "device_memory": 1}
    assert [m["code"] for m in acl._fake.misuse()] == [
        100001,
        100001,
        100002,
        107002,
        107002,
        107001,
        100011,
        107000,
        148051,
    ]
    acl._fake.reset()


def test_failure_spec_parsing(acl: ModuleType) -> None:
    (spec_,) = acl._fake.parse_fail("acl.mdl.execute:2+@1=507899")
    assert (spec_.call, spec_.nth, spec_.and_later, spec_.device, spec_.code) == ("mdl.execute", 2, True, 1, 507899)
    assert [s.call for s in acl._fake.parse_fail("rt.malloc:3, rt.memcpy")] == ["rt.malloc", "rt.memcpy"]


# --- worker processes ----------------------------------------------------------------------
def _worker_top5(device: int, model: str, images: np.ndarray, out: str) -> None:
    """A spawned worker: one session, all resources made in this process, results to ``out``."""
    session = AclBackend().open(Device("npu", device), spec(Path(model)), batch_size=8, threads=0)
    try:
        np.save(out, run_all(session, images))
    finally:
        session.close()


def _worker_wait_for_signal(model: str, ready: str) -> None:
    """Opens a session and never closes it: SIGTERM -> sys.exit -> the backend's atexit hook."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    session = AclBackend().open(Device("npu", 0), spec(Path(model)), batch_size=8, threads=0)
    session.infer(np.zeros((2, 3, 32, 32), np.float32))
    Path(ready).write_text("ready")
    time.sleep(60)


@pytest.fixture
def spawn_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    reports = tmp_path / "reports"
    monkeypatch.setenv("ACL_FAKE_REPORT_DIR", str(reports))
    monkeypatch.delenv("ACL_FAKE_FAIL", raising=False)
    path = [str(FAKES), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    monkeypatch.syspath_prepend(str(FAKES))  # spawn hands sys.path to the child
    return reports


def _reports(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("acl-*.json"))]


def test_two_worker_processes_match_onnxruntime_without_leaks(
    spawn_env: Path, tmp_path: Path, models: dict[str, Path], images: np.ndarray
) -> None:
    ctx = mp.get_context("spawn")
    outs = {d: tmp_path / f"npu{d}.npy" for d in (0, 1)}
    model = {0: models["static"], 1: models["dynamic"]}
    procs = [ctx.Process(target=_worker_top5, args=(d, str(model[d]), images, str(outs[d]))) for d in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    want = reference(models["static"], images)
    for d in (0, 1):
        got = np.load(outs[d])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(top5(got), top5(want))
    reports = _reports(spawn_env)
    assert sorted(r["pid"] for r in reports) == sorted(p.pid for p in procs)
    for r in reports:
        assert r["finalized"] and r["leaked"] == 0 and not r["leaks_at_finalize"] and not r["misuse"], r
        assert r["calls"]["acl.init"] == 1 and r["calls"]["acl.finalize"] == 1


def test_signal_releases_everything(spawn_env: Path, tmp_path: Path, models: dict[str, Path]) -> None:
    ready = tmp_path / "ready"
    proc = mp.get_context("spawn").Process(target=_worker_wait_for_signal, args=(str(models["dynamic"]), str(ready)))
    proc.start()
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists()
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(30)
    assert proc.exitcode == 143
    (report,) = _reports(spawn_env)
    assert report["finalized"] and report["leaked"] == 0 and not report["leaks_at_finalize"], report
    assert not report["misuse"]


# --- jobs through the real CLI ---------------------------------------------------------------
def _job_manifest(d: Path, backend: str, model: Path, devices: str, out: str, max_retries: int = 0) -> Path:
    manifest = d / f"{out}.toml"
    manifest.write_text(
        f"""
[job]
name = "acl-job"
output = "{out}"
[dataset]
paths = ["imgs"]
[model]
path = "{model.name}"
labels = "labels.txt"
input_size = 32
resize = 36
mean = 127.5
std = 64.0
[runtime]
backend = "{backend}"
devices = {devices}
batch_size = 4
unit_size = 10
threads = 1
decode_workers = 1
max_retries = {max_retries}
""",
        "utf-8",
    )
    return manifest


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """60 generated images, a tiny model as .onnx and as .om (gears 1, 2, 4), and the onnxruntime result."""
    d = tmp_path_factory.mktemp("job")
    make_images(d / "imgs", 60, seed=5)
    labels_file(d / "labels.txt")
    tiny_onnx(d / "tiny.onnx")
    shutil.copy(d / "tiny.onnx", d / "tiny.om")
    (d / "tiny.om.json").write_text(json.dumps({"dynamic_batch": [1, 2, 4]}))
    r = cli("run", _job_manifest(d, "onnxruntime", d / "tiny.onnx", '["cpu:0"]', "ref"), "--no-progress")
    assert r.returncode == 0, r.stderr
    return d, _results(d / "ref")


def _results(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("image_id").reset_index(drop=True)


def _run_acl(d: Path, out: str, reports: Path, fail: str = "", max_retries: int = 0) -> subprocess.CompletedProcess:
    env = {
        "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)]),
        "ACL_FAKE_REPORT_DIR": str(reports),
        "ACL_FAKE_FAIL": fail,
    }
    manifest = _job_manifest(d, "acl", d / "tiny.om", "[0, 1]", out, max_retries)
    return cli("run", manifest, "--no-progress", env=env, timeout=120)


def _assert_same_top5(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    got = got.set_index("image_id")
    ref = ref.set_index("image_id").loc[got.index]
    assert (got["status"] == "ok").all()
    assert [list(x) for x in got["top5_index"]] == [list(x) for x in ref["top5_index"]]
    np.testing.assert_allclose(np.stack(got["top5_prob"].to_numpy()), np.stack(ref["top5_prob"].to_numpy()), atol=1e-5)


def _assert_no_leaks(reports: Path) -> list[dict]:
    found = _reports(reports)
    assert found, "no acl report: the workers did not use the emulated pyACL"
    for r in found:
        assert r["finalized"] and r["leaked"] == 0 and not r["leaks_at_finalize"] and not r["misuse"], r
    return found


def test_job_on_two_npus_matches_onnxruntime(job: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    d, ref = job
    r = _run_acl(d, "acl", tmp_path / "reports")
    assert r.returncode == 0, r.stderr
    got = _results(d / "acl")
    assert len(got) == len(ref) and got["image_id"].is_unique
    assert set(got["backend"]) == {"acl"} and set(got["device"]) <= {"npu:0", "npu:1"}
    _assert_same_top5(got, ref)
    reports = _assert_no_leaks(tmp_path / "reports")
    assert sorted(r["devices"] for r in reports) == [[0], [1]]  # one worker process per device


def test_job_survives_devices_failing_to_start(job: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    # npu:1 can never allocate its buffers; npu:0's first worker cannot load the model, its restart can
    d, ref = job
    reports = tmp_path / "reports"
    r = _run_acl(d, "acl-start", reports, "rt.malloc:2@1,mdl.load_from_file:1@0!", max_retries=1)
    assert r.returncode == 0, r.stderr
    assert "npu:1: acl.rt.malloc returned 207001 (ACL_ERROR_RT_MEMORY_ALLOCATION)" in r.stderr
    assert "npu:0: acl.mdl.load_from_file returned 545001 (ACL_ERROR_GE_LOAD_MODEL)" in r.stderr
    got = _results(d / "acl-start")
    assert len(got) == len(ref) and got["image_id"].is_unique and set(got["device"]) == {"npu:0"}
    _assert_same_top5(got, ref)
    # four worker processes (npu:1 twice, then given up; npu:0 failed once, then ran): none leaked
    found = _assert_no_leaks(reports)
    assert sorted(r["devices"] for r in found) == [[0], [0], [1], [1]]


def test_job_with_failures_while_inferring_blames_no_image(job: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    # one batch on each device fails once (host->device copy on npu:0, execute on npu:1); max_retries = 0:
    # the failed units are bisected onto fresh workers, whose halves succeed, so no image is blamed
    d, ref = job
    reports = tmp_path / "reports"
    r = _run_acl(d, "acl-infer", reports, "rt.memcpy:3@0!,mdl.execute_async:2@1!")
    assert r.returncode == 0, r.stderr
    assert "npu:0: acl.rt.memcpy returned 507052 (ACL_ERROR_RT_COPY_DATA)" in r.stderr
    assert "npu:1: acl.mdl.execute_async returned 507011 (ACL_ERROR_RT_MODEL_EXECUTE)" in r.stderr
    final = _results(d / "acl-infer")
    assert len(final) == len(ref) and final["image_id"].is_unique
    _assert_same_top5(final, ref)  # every row ok: the runtime's failures were never written as image errors
    _assert_no_leaks(reports)  # every worker process, the failed ones included


def test_job_whose_every_worker_fails_its_second_execute_blames_no_image(
    job: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    # one NPU, units of 10 and batches of 10 (one execute per unit), and the 2nd execute of every
    # worker process fails, whatever the images: each failing piece ran right after its sibling
    # succeeded on the same worker. Image 19 was blamed (exit 0, an error row) when a success
    # of that worker counted as evidence; a single image now runs as a fresh worker's first task
    d, ref = job
    (tmp_path / "imgs").mkdir()
    for src in sorted((d / "imgs").iterdir())[:20]:
        shutil.copy(src, tmp_path / "imgs" / src.name)
    for name in ("tiny.om", "labels.txt"):
        shutil.copy(d / name, tmp_path / name)
    (tmp_path / "tiny.om.json").write_text(json.dumps({"dynamic_batch": [1, 2, 4, 8, 16]}))
    manifest = _job_manifest(tmp_path, "acl", tmp_path / "tiny.om", "[0]", "out")
    manifest.write_text(manifest.read_text().replace("batch_size = 4", "batch_size = 10"))
    env = {"PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)]), "ACL_FAKE_FAIL": "mdl.execute_async:2"}
    r = cli("run", manifest, "--no-progress", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "npu:0: acl.mdl.execute_async returned 507011 (ACL_ERROR_RT_MODEL_EXECUTE)" in r.stderr
    assert "isolated" not in r.stderr
    got = _results(tmp_path / "out")
    assert len(got) == 20 and got["image_id"].is_unique
    _assert_same_top5(got, ref)  # every row ok
