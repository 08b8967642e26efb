"""The torch backend on CPU torch: the default model against onnxruntime, TorchScript / torch.export files,
device errors, and the GPU-decode module's CPU-testable parts (header sniffing, routing, fallback,
preprocessing parity). Skipped when torch is not installed."""

from __future__ import annotations

import io
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import cli, make_images  # noqa: E402
from PIL import Image  # noqa: E402

from ascend_batch.backends import gpu_decode, jpeg_sniff  # noqa: E402
from ascend_batch.backends.base import Device, get_backend  # noqa: E402
from ascend_batch.backends.onnx import OnnxBackend  # noqa: E402
from ascend_batch.backends.torch import TorchBackend, TorchOptions  # noqa: E402
from ascend_batch.errors import ImageError, StartupError  # noqa: E402
from ascend_batch.models import efficientnet_lite0 as lite0  # noqa: E402
from ascend_batch.models import lite0_torch  # noqa: E402
from ascend_batch.models.resolve import LITE0_PREPROCESS  # noqa: E402
from ascend_batch.models.spec import ModelSpec, imagenet_labels  # noqa: E402
from ascend_batch.preprocess import Preprocess, decode  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")

CPU = Device("cpu", 0)
TINY_PP = Preprocess(size=32, resize=36, mean=(127.5,) * 3, std=(64.0,) * 3)
TINY_LABELS = tuple(f"class{i}" for i in range(10))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _spec(path: Path, fmt: str, *, arch: str | None = None, pp: Preprocess = TINY_PP, labels=TINY_LABELS) -> ModelSpec:
    return ModelSpec(path.stem, path, fmt, pp, labels, "test", arch=arch)


def _lite0_spec(path: Path, fmt: str) -> ModelSpec:
    return ModelSpec(
        "efficientnet_lite0", path, fmt, LITE0_PREPROCESS, imagenet_labels(), "t", arch="efficientnet_lite0"
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _photo(w: int = 320, h: int = 240, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def lite0_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lite0.ensure_onnx(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("imgs")
    return [
        *make_images(folder, 4, size=(320, 240), seed=1, prefix="a"),
        *make_images(folder, 4, size=(200, 300), seed=2, prefix="b"),
    ]


# --------------------------------------------------------------------------- default model


def test_default_model_top5_matches_onnxruntime(lite0_onnx: Path, images: list[Path]) -> None:
    batch = np.stack([decode(p.read_bytes(), LITE0_PREPROCESS).array for p in images])
    weights = lite0.default_weights_path()
    ts = TorchBackend(TorchOptions()).open(CPU, _lite0_spec(weights, "state-dict"), batch_size=8, threads=2)
    ort = OnnxBackend().open(CPU, _lite0_spec(lite0_onnx, "onnx"), batch_size=8, threads=2)
    try:
        assert ts.input_shape == (8, 3, 224, 224) and ts.max_batch == 8
        p_torch, p_ort = _softmax(ts.infer(batch)), _softmax(ort.infer(batch))
        partial = ts.infer(batch[:3])  # fewer than max_batch
    finally:
        ts.close()
        ort.close()
    ts.close()  # idempotent
    assert p_torch.shape == (8, 1000) and p_torch.dtype == np.float32
    top_t, top_o = np.argsort(-p_torch, axis=1)[:, :5], np.argsort(-p_ort, axis=1)[:, :5]
    assert (top_t == top_o).all()
    assert np.abs(np.take_along_axis(p_torch, top_t, 1) - np.take_along_axis(p_ort, top_o, 1)).max() < 1e-3
    assert np.allclose(_softmax(partial), p_torch[:3], atol=1e-5)


def test_lite0_module_fused_and_scripted_agree() -> None:
    model = lite0_torch.load(lite0.default_weights_path())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        fused = model.fuse()
        assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert torch.allclose(fused(x), ref, atol=1e-4)
        scripted = torch.jit.script(fused)
        assert torch.allclose(scripted(x), ref, atol=1e-4)
        # 'SAME' padding is computed per call: other sizes work and give ceil(size / 32) feature maps
        assert fused(torch.zeros(1, 3, 225, 193)).shape == (1, 1000)


def test_lite0_weights_that_do_not_fit(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "extra": torch.zeros(1)}, bad)
    with pytest.raises(
        StartupError, match=r"does not fit architecture 'efficientnet_lite0'.*missing.*unexpected extra"
    ):
        lite0_torch.load(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(StartupError, match=r"garbage\.pth"):
        lite0_torch.load(garbage)


# --------------------------------------------------------------------------- other model formats


def test_torchscript_round_trip(tmp_path: Path) -> None:
    model = Tiny().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    session = get_backend("torch").open(CPU, _spec(path, "torchscript"), batch_size=4, threads=1)
    try:
        got = np.concatenate([session.infer(x[:4]), session.submit(x[4:]).result()])
    finally:
        session.close()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 10) and np.allclose(got, want, atol=1e-5)


def test_torch_export_round_trip(tmp_path: Path) -> None:
    model = Tiny().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    session = TorchBackend(TorchOptions()).open(CPU, _spec(path, "torch-export"), batch_size=4, threads=1)
    try:
        got = session.infer(x)
    finally:
        session.close()
    with torch.no_grad():
        assert np.allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_model_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = tmp_path / "resnet.pth"
    torch.save(Tiny().state_dict(), sd)
    backend = TorchBackend(TorchOptions())
    with pytest.raises(StartupError, match=r"\[model.arch\].*name its architecture"):
        backend.open(CPU, _spec(sd, "state-dict"), batch_size=2, threads=1)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if torchvision were not installed
    with pytest.raises(StartupError, match=r"\[model.arch\] 'resnet50' is a torchvision architecture.*not installed"):
        backend.open(CPU, _spec(sd, "state-dict", arch="resnet50"), batch_size=2, threads=1)
    wrong_classes = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(wrong_classes))
    with pytest.raises(StartupError, match=r"returns shape \(1, 10\).*1000 labels"):
        backend.open(CPU, _spec(wrong_classes, "torchscript", labels=imagenet_labels()), batch_size=2, threads=1)
    with pytest.raises(StartupError, match="cannot load TorchScript"):
        backend.open(CPU, _spec(sd, "torchscript"), batch_size=2, threads=1)


def test_torchvision_architecture(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    session = TorchBackend(TorchOptions()).open(
        CPU, _spec(path, "state-dict", arch="resnet18"), batch_size=2, threads=1
    )
    try:
        got = session.infer(x)
    finally:
        session.close()
    with torch.no_grad():
        assert np.allclose(got, net(torch.from_numpy(x)).numpy(), atol=1e-4)


# --------------------------------------------------------------------------- devices and options


def test_npu_without_torch_npu_is_a_clear_startup_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    with pytest.raises(StartupError, match=r"device npu:1: .*torch_npu.*not installed"):
        TorchBackend(TorchOptions()).open(Device("npu", 1), _spec(path, "torchscript"), batch_size=2, threads=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cuda_unavailable_is_a_clear_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    with pytest.raises(StartupError, match=r"device cuda:0: torch .* sees no CUDA GPU"):
        TorchBackend(TorchOptions()).open(Device("cuda", 0), _spec(path, "torchscript"), batch_size=2, threads=1)


def test_options_from_env() -> None:
    assert TorchOptions.from_env({}) == TorchOptions()
    assert TorchOptions().dtype_for(CPU) == torch.float32
    assert TorchOptions().dtype_for(Device("cuda", 0)) == torch.float16
    assert TorchOptions().dtype_for(Device("npu", 0)) == torch.float16
    opts = TorchOptions.from_env({"ASCEND_BATCH_TORCH_PRECISION": "BF16", "ASCEND_BATCH_TORCH_COMPILE": "yes"})
    assert opts.dtype_for(Device("cuda", 0)) == torch.bfloat16 and opts.compile
    with pytest.raises(StartupError, match="ASCEND_BATCH_TORCH_PRECISION='fp8'"):
        TorchOptions.from_env({"ASCEND_BATCH_TORCH_PRECISION": "fp8"})
    with pytest.raises(StartupError, match="ASCEND_BATCH_TORCH_CHANNELS_LAST"):
        TorchOptions.from_env({"ASCEND_BATCH_TORCH_CHANNELS_LAST": "maybe"})


def test_bf16_on_cpu_is_close_to_fp32(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    outs = []
    for precision in ("fp32", "bf16"):
        s = TorchBackend(TorchOptions(precision=precision)).open(
            CPU, _spec(path, "torchscript"), batch_size=4, threads=1
        )
        try:
            outs.append(s.infer(x))
        finally:
            s.close()
    assert outs[1].dtype == np.float32
    assert np.allclose(outs[0], outs[1], atol=5e-2)


# --------------------------------------------------------------------------- GPU decode (CPU-testable parts)


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(img, exif=exif.tobytes())


def test_sniff_jpeg_routes_what_nvjpeg_should_not_see() -> None:
    img = _photo()
    cases = {
        "baseline": (_jpeg(img), None),
        "grey": (_jpeg(img.convert("L")), None),
        "progressive": (_jpeg(img, progressive=True), "progressive/lossless/arithmetic JPEG"),
        "cmyk": (_jpeg(img.convert("CMYK")), "4-component JPEG (CMYK/YCCK)"),
        "rotated": (_exif_rotated(img), "EXIF-rotated"),
        "truncated": (_jpeg(img)[:-200], "truncated"),
        "png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a JPEG"),
        "garbage": (b"\xff\xd8\xff\xe0\x00", "not a JPEG"),
    }
    for name, (data, reason) in cases.items():
        assert gpu_decode.gpu_refusal(gpu_decode.sniff_jpeg(data), 10**9) == reason, name
    info = gpu_decode.sniff_jpeg(_jpeg(img))
    assert info is not None and (info.width, info.height, info.components) == (320, 240, 3)
    assert gpu_decode.gpu_refusal(info, max_pixels=1000) == "size"
    assert gpu_decode.sniff_jpeg(_exif_rotated(img)).orientation == 6  # type: ignore[union-attr]
    big_endian_exif = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + struct.pack(">HHI4s", 0x0112, 3, 1, b"\x00\x03\x00\x00")
    assert jpeg_sniff.exif_orientation(big_endian_exif) == 3


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(320, 240), (200, 300), (256, 256), (600, 480)])
def test_gpu_preprocessing_matches_the_cpu_path(interpolation: str, size: tuple[int, int]) -> None:
    pp = Preprocess(size=224, resize=256, interpolation=interpolation)
    data = _jpeg(_photo(*size, seed=3), quality=92)
    ref = decode(data, pp).array
    pixels = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    got = gpu_decode.resize_crop_normalise(torch.from_numpy(pixels).permute(2, 0, 1), pp).numpy()
    assert got.shape == ref.shape == (3, 224, 224)
    diff = np.abs(got - ref) * 128.0  # in 8-bit levels
    # Pillow's fixed-point filters vs torch's float ones: at most one level apart; (600, 480) is
    # decoded by Pillow at reduced DCT scale (draft), so only close on average
    assert diff.mean() < (3.0 if min(size) > 2 * pp.resize else 0.3)
    if min(size) <= 2 * pp.resize:
        assert diff.max() <= 1.0


def _pil_decode(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    out = []
    for t in encoded:
        arr = np.array(Image.open(io.BytesIO(t.numpy().tobytes())).convert("RGB"))
        out.append(torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(device))
    return out


def test_gpu_decoder_routes_and_falls_back_per_batch() -> None:
    pp = LITE0_PREPROCESS
    img = _photo(300, 220, seed=4)
    datas = [
        _jpeg(img),
        _jpeg(img, progressive=True),
        b"not an image",
        _jpeg(_photo(240, 320, seed=5)),
        _jpeg(img.convert("CMYK")),
        _jpeg(img.convert("L")),
    ]
    dec = gpu_decode.GpuJpegDecoder(pp, torch.device("cpu"), max_batch=2, decode_fn=_pil_decode)
    batch = dec.decode(datas)
    assert batch.rows == [0, 1, 3, 4, 5] and batch.gpu == 3 and batch.cpu == 2
    assert isinstance(batch.results[2], ImageError) and batch.results[0] == (300, 220)
    assert batch.tensor.shape == (5, 3, 224, 224) and batch.tensor.dtype == torch.float32
    cpu = np.stack([decode(datas[i], pp).array for i in batch.rows])
    assert np.abs(batch.tensor.numpy() - cpu).max() * 128 <= 1.0
    assert dec.stats.cpu_reasons == {
        "progressive/lossless/arithmetic JPEG": 1,
        "not a JPEG": 1,
        "4-component JPEG (CMYK/YCCK)": 1,
    }

    calls = []

    def refuse(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        calls.append(len(encoded))
        raise RuntimeError("Error while decoding JPEG images: Failed to decode batch: 6")

    flaky = gpu_decode.GpuJpegDecoder(pp, torch.device("cpu"), max_batch=2, decode_fn=refuse)
    first = flaky.decode(datas)
    assert first.rows == [0, 1, 3, 4, 5] and first.gpu == 0  # the refused chunk went to the CPU
    assert calls == [2] and flaky.disabled and "Failed to decode batch" in flaky.disabled
    assert np.abs(first.tensor.numpy() - cpu).max() * 128 <= 1.0
    flaky.decode(datas[:1])
    assert calls == [2]  # never asked again in this process


def test_session_takes_a_decoded_tensor(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    session = TorchBackend(TorchOptions()).open(CPU, _spec(path, "torchscript"), batch_size=4, threads=1)
    try:
        dec = gpu_decode.GpuJpegDecoder(TINY_PP, torch.device("cpu"), decode_fn=_pil_decode)
        datas = [_jpeg(_photo(64, 48, seed=s)) for s in range(3)]
        out = list(gpu_decode.prefetched(dec, [("first", datas), ("second", datas[:1]), ("third", datas[1:])]))
        assert [key for key, _ in out] == ["first", "second", "third"]
        assert [len(b.rows) for _, b in out] == [3, 1, 2]
        batch = out[0][1]
        got = session.submit_tensor(batch.tensor, batch.ready).result()
        want = session.infer(batch.tensor.numpy())
    finally:
        session.close()
    assert session.device_decoder(10**8) is None  # cpu session: no GPU decode
    assert np.allclose(got, want, atol=1e-6)


# --------------------------------------------------------------------------- whole job through the CLI


def test_job_through_cli_matches_onnxruntime(tmp_path: Path, lite0_onnx: Path, images: list[Path]) -> None:
    import pandas as pd

    folder = images[0].parent
    results = {}
    for backend in ("torch", "onnxruntime"):
        manifest = tmp_path / f"{backend}.toml"
        manifest.write_text(
            f"""
[job]
name = "torch-vs-ort"
output = "out-{backend}"

[dataset]
paths = ["{folder}"]

[runtime]
backend = "{backend}"
devices = ["cpu"]
batch_size = 4
unit_size = 4
threads = 1
decode_workers = 1
""",
            "utf-8",
        )
        proc = cli("run", manifest, env={"ASCEND_BATCH_CACHE": str(lite0_onnx.parent)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        df = pd.read_parquet(tmp_path / f"out-{backend}").sort_values("image_id").reset_index(drop=True)
        assert (df["status"] == "ok").all() and len(df) == len(images)
        assert set(df["backend"]) == {backend}
        results[backend] = df
    t, o = results["torch"], results["onnxruntime"]
    assert list(t["image_id"]) == list(o["image_id"])
    for a, b in zip(t["top5_index"], o["top5_index"], strict=True):
        assert list(a) == list(b)
    for a, b in zip(t["top5_prob"], o["top5_prob"], strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-3


def test_device_decode_path_through_the_runner_matches_cpu_decode(tmp_path: Path) -> None:
    """The worker's device-decode path (stand-in decoder on the CPU) gives the same rows as the plain
    CPU path: same top-5, PNG and progressive JPEG sent to the CPU fallback, a truncated file an error."""
    import pandas as pd
    from helpers import REPO, labels_file

    imgs = tmp_path / "imgs"
    make_images(imgs, 9, size=(80, 60), seed=11)
    Image.open(imgs / "img00000.jpg").save(imgs / "progressive.jpg", progressive=True, quality=90)
    Image.open(imgs / "img00001.jpg").save(imgs / "plain.png")
    (imgs / "truncated.jpg").write_bytes((imgs / "img00002.jpg").read_bytes()[:300])
    model = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny().eval()), str(model))
    labels = labels_file(tmp_path / "labels.txt")
    outs = {}
    for backend in ("torch", "device_decode_backend:DeviceDecodeBackend"):
        out = tmp_path / ("cpu" if backend == "torch" else "device")
        m = tmp_path / "job.toml"
        m.write_text(
            f'[job]\noutput = "{out}"\n[dataset]\npaths = ["{imgs}"]\n'
            f'[model]\npath = "{model}"\nlabels = "{labels}"\ninput_size = 32\nresize = 36\nmean = 127.5\nstd = 64.0\n'
            f'[runtime]\nbackend = "{backend}"\ndevices = ["cpu"]\nbatch_size = 4\nunit_size = 6\n'
        )
        env = {"PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{REPO}", "DEVICE_DECODE_LOG": str(tmp_path / "log")}
        r = cli("run", m, "--no-progress", env=env)
        assert r.returncode == 0, r.stderr
        outs[backend] = pd.read_parquet(out).sort_values("image_id").reset_index(drop=True)
    assert (tmp_path / "log").read_text().split()  # the stand-in device decoder was used
    cpu, dev = outs["torch"], outs["device_decode_backend:DeviceDecodeBackend"]
    assert list(cpu["image_id"]) == list(dev["image_id"]) and len(dev) == 12
    assert list(cpu["status"]) == list(dev["status"])
    assert dev.set_index("image_id").loc["truncated.jpg", "status"] == "error"
    ok = dev["status"] == "ok"
    assert [list(x) for x in cpu.loc[ok, "top5_index"]] == [list(x) for x in dev.loc[ok, "top5_index"]]
    np.testing.assert_allclose(np.stack(cpu.loc[ok, "top5_prob"]), np.stack(dev.loc[ok, "top5_prob"]), atol=2e-2)
    assert (cpu.loc[ok, ["width", "height"]].to_numpy() == dev.loc[ok, ["width", "height"]].to_numpy()).all()
