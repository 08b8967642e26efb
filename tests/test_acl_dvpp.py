"""The acl backend's DVPP decode stage and AIPP models.

Unit level (no emulator; the VPC plan's geometry is tests/test_vpc_plan.py): the host's RGB -> NV12
matches Pillow's JFIF YCbCr; the routing sends to the CPU exactly what JPEGD
cannot take. Through the emulated pyACL (tests/fakes/acl; JPEGD and VPC are emulated with Pillow and
numpy, figures from them are the emulator's, not hardware's): sessions, and jobs through the real CLI.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, children, cli, labels_file, tiny_onnx, wait_for
from PIL import Image
from test_acl_backend import acl  # noqa: F401  (the in-process emulator fixture: fails on misuse or leaks)

from ascend_batch.backends.acl import AclBackend
from ascend_batch.backends.base import Device
from ascend_batch.backends.dvpp import dvpp_refusal, rgb_to_nv12
from ascend_batch.backends.jpeg_sniff import sniff_jpeg
from ascend_batch.errors import BackendError
from ascend_batch.models.spec import ModelSpec
from ascend_batch.preprocess import Preprocess, decode


def test_rgb_to_nv12_matches_pillows_jfif_ycbcr() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    nv12 = rgb_to_nv12(rgb)
    assert nv12.shape == (32 * 48 * 3 // 2,) and nv12.dtype == np.uint8
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr")).astype(np.int16)
    y = nv12[: 32 * 48].reshape(32, 48).astype(np.int16)
    assert np.abs(y - ycc[..., 0]).max() <= 1
    uv = nv12[32 * 48 :].reshape(16, 24, 2).astype(np.float32)
    want = ycc[..., 1:].reshape(16, 2, 24, 2, 2).mean(axis=(1, 3))
    assert np.abs(uv - want).max() <= 1.0


def _jpeg(size: tuple[int, int], **save: object) -> bytes:
    buf = io.BytesIO()
    mode = save.pop("mode", "RGB")
    Image.new(str(mode), size, (200, 30, 90, 0)[: len(str(mode))] if mode != "L" else 100).save(buf, "JPEG", **save)
    return buf.getvalue()


def test_routing_sends_to_the_cpu_what_jpegd_cannot_take() -> None:
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, "PNG")
    cases = {
        "baseline": (_jpeg((64, 48)), None),
        "grey": (_jpeg((64, 48), mode="L"), None),
        "progressive": (_jpeg((64, 48), progressive=True), "progressive/lossless/arithmetic JPEG"),
        "cmyk": (_jpeg((64, 48), mode="CMYK"), "4-component JPEG (CMYK/YCCK)"),
        "truncated": (_jpeg((64, 48))[:-40], "truncated"),
        "tiny": (_jpeg((16, 16)), "16x16 is outside JPEGD's 32..8192"),
        "png": (png.getvalue(), "not a JPEG"),
    }
    for name, (data, why) in cases.items():
        assert dvpp_refusal(sniff_jpeg(data), 10**9) == why, name
    assert dvpp_refusal(sniff_jpeg(_jpeg((64, 48))), max_pixels=100) == "size"


# --- through the emulated pyACL ----------------------------------------------------------------------

FAKES = Path(__file__).parent / "fakes"
SIZE = 32
MEAN, STD = 127.5, 64.0
JPEG_CSC = {  # ATC's YUV420SP_U8 -> RGB table for JPEG (full-range BT.601), channel 0 = R
    "matrix_r0c0": 256, "matrix_r0c1": 0, "matrix_r0c2": 359,
    "matrix_r1c0": 256, "matrix_r1c1": -88, "matrix_r1c2": -183,
    "matrix_r2c0": 256, "matrix_r2c1": 454, "matrix_r2c2": 0,
    "input_bias_0": 0, "input_bias_1": 128, "input_bias_2": 128,
}  # fmt: skip


def aipp_table(size: int, mean: float, std: float) -> dict:
    """An aipp.cfg (as the emulator's .om sidecar) reproducing the manifest's mean/std from NV12."""
    return {
        "aipp_mode": "static",
        "input_format": "YUV420SP_U8",
        "src_image_size_w": size,
        "src_image_size_h": size,
        "csc_switch": True,
        "rbuv_swap_switch": False,
        **JPEG_CSC,
        **{f"mean_chn_{i}": 0 for i in range(3)},
        **{f"min_chn_{i}": mean for i in range(3)},
        **{f"var_reci_chn_{i}": 1 / std for i in range(3)},
    }


def manifest(d: Path, model: str, out: str, *, device_decode: bool, batch: int = 4, extra: str = "") -> Path:
    m = d / f"{Path(out).name}.toml"
    m.write_text(
        f"""
[job]
name = "dvpp"
output = "{out}"
[dataset]
paths = ["imgs"]
[model]
path = "{model}"
labels = "labels.txt"
input_size = {SIZE}
resize = 36
mean = {MEAN}
std = {STD}
{extra}
[runtime]
backend = "{"acl" if model.endswith(".om") else "onnxruntime"}"
devices = {"[0]" if model.endswith(".om") else '["cpu:0"]'}
batch_size = {batch}
unit_size = 10
threads = 1
decode_workers = 1
max_retries = 1
{"device_decode = " + str(device_decode).lower() if model.endswith(".om") else ""}
""",
        "utf-8",
    )
    return m


def run_acl(m: Path, reports: Path, fail: str = "", **env: str) -> subprocess.CompletedProcess:
    full = {
        "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)]),
        "ACL_FAKE_REPORT_DIR": str(reports),
        "ACL_FAKE_FAIL": fail,
        **env,
    }
    return cli("run", m, "--no-progress", env=full, timeout=180)


def reports_clean(reports: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(reports.glob("acl-*.json"))]
    assert found, "no acl report: the workers did not use the emulated pyACL"
    for r in found:
        assert r["finalized"] and r["leaked"] == 0 and not r["leaks_at_finalize"] and not r["misuse"], r
    return found


def rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("image_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of several sizes (odd ones too), a tiny model as .onnx and as an AIPP .om (gears 1, 2, 4)."""
    d = tmp_path_factory.mktemp("dvpp")
    rng = np.random.default_rng(11)
    (d / "imgs").mkdir()
    for i in range(40):
        w, h = [(64, 48), (101, 75), (48, 96), (200, 133)][i % 4]
        small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(
            d / "imgs" / f"img{i:03d}.jpg", quality=92
        )
    labels_file(d / "labels.txt")
    tiny_onnx(d / "tiny.onnx", size=SIZE)
    shutil.copy(d / "tiny.onnx", d / "aipp.om")
    (d / "aipp.om.json").write_text(json.dumps({"dynamic_batch": [1, 2, 4], "aipp": aipp_table(SIZE, MEAN, STD)}))
    return d


def test_aipp_job_with_dvpp_agrees_with_the_cpu_path(lab: Path) -> None:
    ref = cli("run", manifest(lab, "tiny.onnx", "ref", device_decode=False), "--no-progress")
    assert ref.returncode == 0, ref.stderr
    runs = {}
    for dd in (True, False):
        out = f"aipp-{'dvpp' if dd else 'cpu'}"
        r = run_acl(manifest(lab, "aipp.om", out, device_decode=dd), lab / f"reports-{out}")
        assert r.returncode == 0, r.stderr
        reports_clean(lab / f"reports-{out}")
        runs[dd] = rows(lab / out)
        summary = json.loads((lab / out / "_summary.json").read_text())
        assert summary["decoded_on"] == ({"device": 40} if dd else {"cpu": 40})
        if dd:
            assert summary["stage_seconds"]["device_decode"] > 0
    base = rows(lab / "ref")
    for got in runs.values():
        assert (got["status"] == "ok").all() and list(got["image_id"]) == list(base["image_id"])
    # AIPP on the host-converted NV12 (CPU decode): only the conversion's rounding differs from onnxruntime
    host = runs[False]
    assert (host["top1_label"] == base["top1_label"]).mean() >= 0.95
    # DVPP: its own decode, crop and chroma resampling; the tiny random model's margins are thin
    dvpp = runs[True]
    assert (dvpp["top1_label"] == base["top1_label"]).mean() >= 0.8
    assert all(a in set(b) for a, b in zip(dvpp["top1_label"], base["top5_label"], strict=True))


def test_pyacl_without_crop_resize_uses_vpc_crop(lab: Path, tmp_path: Path) -> None:
    # CANN before 6 has no dvpp_vpc_crop_resize_async: the same plan runs with dvpp_vpc_crop_async
    out = tmp_path / "out"
    r = run_acl(manifest(lab, "aipp.om", str(out), device_decode=True), tmp_path / "reports",
                ACL_FAKE_HIDE="media.dvpp_vpc_crop_resize_async")  # fmt: skip
    assert r.returncode == 0, r.stderr
    reports_clean(tmp_path / "reports")
    assert json.loads((out / "_summary.json").read_text())["decoded_on"] == {"device": 40}
    with_resize = rows(lab / "aipp-dvpp") if (lab / "aipp-dvpp").exists() else None
    if with_resize is not None:  # the emulator's filter is the same for both calls: the same rows
        assert list(rows(out)["top1_label"]) == list(with_resize["top1_label"])


def test_every_file_takes_the_right_path_and_gets_one_row(lab: Path, tmp_path: Path) -> None:
    d = tmp_path
    shutil.copytree(lab / "imgs", d / "imgs")
    for name in ("labels.txt", "aipp.om", "aipp.om.json"):
        shutil.copy(lab / name, d / name)
    pic = Image.open(lab / "imgs" / "img000.jpg")
    pic.save(d / "imgs" / "zz-progressive.jpg", progressive=True)
    pic.convert("CMYK").save(d / "imgs" / "zz-cmyk.jpg")
    (d / "imgs" / "zz-truncated.jpg").write_bytes((lab / "imgs" / "img001.jpg").read_bytes()[:300])
    pic.save(d / "imgs" / "zz-png.png")
    # the 5th image JPEGD takes is refused at run time: the CPU decodes it instead
    r = run_acl(manifest(d, "aipp.om", "out", device_decode=True), d / "reports", fail="media.dvpp_jpeg_decode_async:5")
    assert r.returncode == 0, r.stderr
    reports_clean(d / "reports")
    df = rows(d / "out")
    assert len(df) == 44 and df["image_id"].is_unique
    bad = df[df["status"] == "error"]
    assert list(bad["image_id"]) == ["zz-truncated.jpg"] and bad["error"].iloc[0].startswith("decode:")
    summary = json.loads((d / "out" / "_summary.json").read_text())
    # 40 plain JPEGs: 39 on DVPP, 1 refused -> CPU; progressive, CMYK and PNG -> CPU; truncated fails both
    assert summary["decoded_on"] == {"device": 39, "cpu": 4}


@pytest.mark.parametrize(
    "fail",
    [
        "media.dvpp_vpc_crop_resize_async:6!",  # a VPC call of the first batch
        "media.dvpp_malloc:5!",  # a DVPP allocation of the first batch
    ],
)
def test_failure_mid_batch_releases_everything_and_the_job_completes(lab: Path, tmp_path: Path, fail: str) -> None:
    # the first worker's call fails: its task fails, the worker waits for what it queued, releases
    # everything (DVPP buffers, descriptions, channel, then the model) and exits; a fresh worker redoes the unit
    r = run_acl(manifest(lab, "aipp.om", str(tmp_path / "out"), device_decode=True), tmp_path / "reports", fail=fail)
    assert r.returncode == 0, r.stderr
    assert "acl.media." + fail.split(":")[0].split(".")[1] in r.stderr
    found = reports_clean(tmp_path / "reports")  # no misuse: nothing freed under a queued task
    assert len(found) >= 2  # the failed worker and its replacement, both balanced
    df = rows(tmp_path / "out")
    assert len(df) == 40 and (df["status"] == "ok").all()


def test_failure_after_jpegd_is_queued_waits_for_the_stream_before_freeing(
    acl: ModuleType,  # noqa: F811  (the fixture imported above)
    lab: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # in-process, so the emulator's own bookkeeping is the witness (the `acl` fixture fails the test on
    # any misuse or anything left live): slot 0's intermediate VPC buffer cannot be had after its JPEGD
    # task is queued; the decoder must wait for that task before it frees the buffers and description
    pp = Preprocess(size=SIZE, resize=36, mean=(MEAN,) * 3, std=(STD,) * 3)
    model = ModelSpec("aipp", lab / "aipp.om", "om", pp, tuple(f"class{i}" for i in range(10)), "test")
    jpeg = (lab / "imgs" / "img000.jpg").read_bytes()
    with AclBackend().open(Device("npu", 0), model, batch_size=4, threads=0) as session:
        decoder = session.device_decoder(10**9, 4)
        assert decoder is not None
        mallocs = sum(c.name == "acl.media.dvpp_malloc" for c in acl._fake.calls())  # the staging buffers
        monkeypatch.setenv("ACL_FAKE_FAIL", f"media.dvpp_malloc:{mallocs + 3}")  # input, JPEGD output, then this
        with pytest.raises(BackendError, match="dvpp_malloc"):
            decoder.decode([jpeg], lambda datas: [decode(d, pp) for d in datas])
        names = [c.name for c in acl._fake.calls()]
        assert "acl.media.dvpp_jpeg_decode_async" in names
        assert names.index("acl.rt.synchronize_stream", names.index("acl.media.dvpp_jpeg_decode_async")) > 0


@pytest.mark.parametrize("how", ["sigterm", "kill-worker"])
def test_stopped_or_killed_mid_job_leaks_nothing(lab: Path, tmp_path: Path, how: str) -> None:
    m = manifest(lab, "aipp.om", str(tmp_path / "out"), device_decode=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)]),
        "ACL_FAKE_REPORT_DIR": str(tmp_path / "reports"),
        "ACL_FAKE_SYNC_DELAY": "0.05",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ascend_batch", "run", str(m), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    out = tmp_path / "out"
    assert wait_for(lambda: any(out.glob("part-*.parquet"))), "no unit committed"
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
    else:
        (worker,) = children(proc.pid)
        os.kill(worker, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        df = rows(out)
        assert len(df) == 40 and df["image_id"].is_unique and (df["status"] == "ok").all()
    reports_clean(tmp_path / "reports")  # every worker that could report: balanced (a SIGKILLed one cannot)
