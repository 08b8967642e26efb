"""Every backend of the registry (``backends.base.BACKENDS``) passes the same session contract.

One tiny classifier, the same weights for every backend: ``helpers.tiny_onnx`` for onnxruntime, the same
file with a static batch of 4 as an ``.om`` for acl (run by the emulated pyACL in tests/fakes/acl, whose
``.om`` files are ONNX), and a TorchScript module built from the ONNX file's weights for torch (on the CPU;
skipped when torch does not import). For each backend:

- ``get_backend(name)`` declares ``features`` as a :class:`BackendFeatures` and carries its registry name;
- a session declares ``features`` (:class:`SessionFeatures`), ``device``, ``max_batch`` and ``input_shape``
  = ``model.preprocess.input_shape(max_batch)``;
- ``infer`` of 1..max_batch samples gives float32 ``(n, classes)`` logits; a sample's logits do not depend
  on what else is in the batch, nor on its position; and they equal onnxruntime's for the same weights;
- ``device_decoder(...)`` is ``None`` exactly when ``features.device_decode`` is false;
- ``close()`` is idempotent, leaves nothing live in the runtime, and ``infer`` after it is a BackendError;
- a failed ``open`` (missing file, manifest mismatch, an injected pyACL failure at several points) raises
  StartupError and releases everything: no session object survives it, the fake pyACL's accounting is
  balanced (nothing live, finalized, no misuse), and the next ``open`` works.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import tiny_onnx
from onnx import numpy_helper

from ascend_batch.backends.base import (
    BACKENDS,
    BackendFeatures,
    Device,
    Session,
    SessionBase,
    SessionFeatures,
    get_backend,
)
from ascend_batch.errors import BackendError, StartupError
from ascend_batch.models.spec import ModelSpec
from ascend_batch.preprocess import Preprocess

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")

FAKES = Path(__file__).parent / "fakes"
CLASSES = 10
LABELS = tuple(f"class{i}" for i in range(CLASSES))
PP = Preprocess(size=32, resize=36, mean=(127.5,) * 3, std=(64.0,) * 3)
MAX_BATCH = 4

# ways each backend is made to fail while opening (see _failing_spec)
FAILURES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("missing file", "input size"),
    "torch": ("missing file", "labels"),
    "acl": (
        "missing file",
        "labels",
        "acl:mdl.load_from_file",
        "acl:rt.malloc:2",
        "acl:create_data_buffer:2",
        "acl:rt.malloc_host",
    ),
}


@dataclass
class Case:
    """One registry backend, ready to open the tiny model on a device it runs on."""

    name: str
    device: Device
    model: ModelSpec
    live: Callable[[], dict[str, int]] = field(default=dict)  # runtime resources still live, by kind

    def open(self, model: ModelSpec | None = None) -> Session:
        backend = get_backend(self.name)
        return backend.open(self.device, model or self.model, batch_size=MAX_BATCH, threads=1)


# --- models --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("contract")
    return {
        "onnx": tiny_onnx(d / "tiny.onnx", classes=CLASSES),  # dynamic batch
        "om": tiny_onnx(d / "tiny4.om", classes=CLASSES, batch=MAX_BATCH),  # same weights, static batch 4
    }


def _torchscript(onnx_path: Path, out: Path) -> Path:
    """The ONNX tiny classifier (conv 3x3 -> relu -> global pool -> gemm) as TorchScript, same weights."""
    import torch

    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(str(onnx_path)).graph.initializer}
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    fc = torch.nn.Linear(8, CLASSES)
    assert conv.bias is not None
    with torch.no_grad():
        conv.weight.copy_(w["w"])
        conv.bias.copy_(w["b"])
        fc.weight.copy_(w["fc"])  # Gemm with transB=1: the same (out, in) layout as Linear
        fc.bias.copy_(w["fcb"])

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = conv, fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    traced = torch.jit.trace(Tiny().eval(), torch.zeros(1, 3, PP.size, PP.size))
    torch.jit.save(traced, str(out))
    return out


def _spec(path: Path, fmt: str) -> ModelSpec:
    return ModelSpec(path.stem, path, fmt, PP, LABELS, "contract")


# --- one case per registry entry -----------------------------------------------------------
def _onnx_case(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Case]:
    yield Case("onnxruntime", Device("cpu", 0), _spec(models["onnx"], "onnx"))


def _torch_case(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Case]:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"torch does not import here ({exc}); install the 'torch' extra to check the torch backend")
    path = _torchscript(models["onnx"], tmp_path / "tiny.pt")
    yield Case("torch", Device("cpu", 0), _spec(path, "torchscript"))


def _acl_case(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Case]:
    """The emulated pyACL, fresh for the test; afterwards nothing may be left live or misused."""
    from ascend_batch.backends.acl import ACL_PROCESS

    for var in ("ACL_FAKE_FAIL", "ACL_FAKE_HIDE", "ACL_FAKE_REPORT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(FAKES))
    import acl as fake

    fake._fake.reset()

    def live() -> dict[str, int]:
        return {k: v for k, v in fake._fake.live().items() if v}

    try:
        yield Case("acl", Device("npu", 0), _spec(models["om"], "om"), live=live)
        assert not live(), f"left live: {live()}"
        assert not fake._fake.misuse(), fake._fake.misuse()
    finally:
        for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
            del sys.modules[name]
        ACL_PROCESS.users, ACL_PROCESS.owned = 0, False
        ACL_PROCESS.sessions.clear()


CASES: dict[str, Callable[..., Iterator[Case]]] = {"onnxruntime": _onnx_case, "torch": _torch_case, "acl": _acl_case}


@pytest.fixture(params=sorted(BACKENDS))
def case(
    request: pytest.FixtureRequest, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Case]:
    make = CASES.get(request.param)
    if make is None:
        pytest.fail(f"backend {request.param!r} is in the registry but has no contract case here")
    yield from make(models, tmp_path, monkeypatch)


def _samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(PP.input_shape(n)).astype(PP.numpy_dtype)


def same(got: np.ndarray, want: np.ndarray, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _session_ids() -> set[int]:
    gc.collect()
    return {id(o) for o in gc.get_objects() if issubclass(type(o), SessionBase)}


# --- the registry --------------------------------------------------------------------------
def test_every_registered_backend_has_a_contract_case() -> None:
    assert set(CASES) == set(BACKENDS)
    assert set(FAILURES) == set(BACKENDS)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_get_backend_declares_backend_features(name: str) -> None:
    try:
        backend = get_backend(name)
    except StartupError as exc:
        if name == "torch" and "not available" in str(exc):
            pytest.skip(f"torch does not import here: {exc}")
        raise
    assert isinstance(backend.features, BackendFeatures)
    assert backend.name == name


# --- sessions ------------------------------------------------------------------------------
def test_session_declares_features_and_shape(case: Case) -> None:
    session = case.open()
    try:
        assert isinstance(session, Session)
        assert isinstance(session.features, SessionFeatures)
        assert session.device == case.device
        assert session.max_batch == MAX_BATCH
        assert session.input_shape == case.model.preprocess.input_shape(session.max_batch)
    finally:
        session.close()


def test_infer_gives_float32_logits_per_sample(case: Case) -> None:
    session = case.open()
    try:
        for n in sorted({1, 2, session.max_batch}):
            out = session.infer(_samples(n, seed=n))
            assert isinstance(out, np.ndarray)
            assert out.dtype == np.float32 and out.shape == (n, CLASSES), (n, out.dtype, out.shape)
    finally:
        session.close()


def test_a_sample_does_not_depend_on_the_rest_of_its_batch(case: Case) -> None:
    session = case.open()
    batch = _samples(session.max_batch, seed=1)
    try:
        full = session.infer(batch)
        for i in range(len(batch)):
            same(session.infer(batch[i : i + 1])[0], full[i])  # alone (padded by static-batch backends)
        order = [2, 0]  # fewer than max_batch, other positions
        same(session.infer(batch[order]), full[order])
        same(session.infer(batch[::-1].copy()), full[::-1])
        other = _samples(session.max_batch, seed=2)
        other[1] = batch[1]  # the same sample among different neighbours
        same(session.infer(other)[1], full[1])
    finally:
        session.close()


def test_same_weights_same_logits_as_plain_onnxruntime(case: Case, models: dict[str, Path]) -> None:
    batch = _samples(MAX_BATCH, seed=3)
    ref = ort.InferenceSession(str(models["onnx"]), providers=["CPUExecutionProvider"])
    want = ref.run(None, {ref.get_inputs()[0].name: batch})[0]
    session = case.open()
    try:
        got = session.infer(batch)
    finally:
        session.close()
    same(got, want, tol=1e-4)
    np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :3], np.argsort(-want, axis=1)[:, :3])


def test_device_decoder_exactly_when_declared(case: Case) -> None:
    session = case.open()
    try:
        decoder = session.device_decoder(10**8, session.max_batch)
        assert (decoder is not None) == session.features.device_decode, (decoder, session.features)
    finally:
        session.close()


def test_close_is_idempotent_and_final(case: Case) -> None:
    session = case.open()
    session.infer(_samples(1))
    session.close()
    session.close()
    assert case.live() == {}
    with pytest.raises(BackendError):
        session.infer(_samples(1))
    session.close()
    assert case.live() == {}


# --- failed opens --------------------------------------------------------------------------
def _failing_spec(case: Case, failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    model = case.model
    if failure == "missing file":
        return replace(model, path=tmp_path / f"absent{model.path.suffix}")
    if failure == "input size":  # the model takes 32x32; the manifest says 64
        return replace(model, preprocess=replace(PP, size=64, resize=72))
    if failure == "labels":  # the model has 10 classes; the labels 1000
        return replace(model, labels=tuple(f"label{i}" for i in range(1000)))
    if failure.startswith("acl:"):
        monkeypatch.setenv("ACL_FAKE_FAIL", failure.removeprefix("acl:"))
        return model
    raise AssertionError(f"unknown failure {failure!r}")


@pytest.mark.parametrize(
    ("case", "failure"),
    [(name, failure) for name in sorted(BACKENDS) for failure in FAILURES.get(name, ())],
    indirect=["case"],
)
def test_a_failed_open_releases_everything(
    case: Case, failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _failing_spec(case, failure, tmp_path, monkeypatch)
    before = _session_ids()
    with pytest.raises(StartupError) as err:
        case.open(spec)
    assert str(err.value).strip()
    del err  # its traceback holds the half-opened session's frames
    assert _session_ids() <= before, "a session object survived its failed open"
    assert case.live() == {}
    # nothing of the failure stays behind in the process: the next open works
    monkeypatch.delenv("ACL_FAKE_FAIL", raising=False)
    session = case.open()
    try:
        assert session.infer(_samples(1)).shape == (1, CLASSES)
    finally:
        session.close()
    assert case.live() == {}
