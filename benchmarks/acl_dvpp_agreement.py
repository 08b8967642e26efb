"""DVPP + AIPP against the CPU path, on real images, through the emulated pyACL (tests/fakes/acl).

Builds the default model (EfficientNet-Lite0) twice as an emulated ``.om`` (an ONNX file; the emulator
runs it with onnxruntime): a plain float model, and an AIPP model whose sidecar holds the aipp.cfg of
the README (YUV420SP in, the default model's mean 127 / std 128). Runs three jobs through the real CLI:

  cpu   acl, plain model, CPU decode (today's float path)
  host  acl, AIPP model, device_decode = false (CPU decode, NV12 made on the host)
  dvpp  acl, AIPP model, device_decode = true (JPEGD + VPC emulated with Pillow/numpy)

and prints top-1 agreement with the float CPU path, the AIPP model's agreement between its two decode
paths (dvpp against host: a file gets the same answer whichever decoder the per-file routing picks),
each with a 95% Wilson interval (500 images leave about +-1.3 points of sampling noise), top-1/top-5
accuracy when labels are given, and where the images were decoded. For scale, it also prints how
often the float CPU path's own top-1 moves when its crop is shifted by half a source pixel, or resized
bicubic instead of bilinear: the model's own sensitivity on these images, the scale on which agreement
is read; and the float path's top-1/top-2 probability margin on the images whose top-1 moved. Figures
from the emulator say that the pipeline's geometry, colour conversion and fallbacks are right; they say
nothing about speed on an NPU.

    python benchmarks/acl_dvpp_agreement.py ../shared/data/imagenet-sample \
        --labels ../shared/data/imagenet-sample/labels.csv --work /tmp/dvpp-agreement
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
FAKES = REPO / "tests" / "fakes"
CSC = {  # ATC's YUV420SP_U8 -> RGB for JPEG's full-range BT.601 YCbCr
    "matrix_r0c0": 256, "matrix_r0c1": 0, "matrix_r0c2": 359,
    "matrix_r1c0": 256, "matrix_r1c1": -88, "matrix_r1c2": -183,
    "matrix_r2c0": 256, "matrix_r2c1": 454, "matrix_r2c2": 0,
    "input_bias_0": 0, "input_bias_1": 128, "input_bias_2": 128,
}  # fmt: skip
GEARS = [1, 2, 4, 8, 16, 32]


def build_models(work: Path) -> None:
    from ascend_batch.models import efficientnet_lite0 as lite0

    onnx_path = work / "lite0.onnx"
    if not onnx_path.exists():
        lite0.convert(lite0.default_weights_path(), onnx_path)
    for name, aipp in (("lite0_plain.om", None), ("lite0_aipp.om", True)):
        shutil.copy(onnx_path, work / name)
        sidecar: dict = {"dynamic_batch": GEARS}
        if aipp:
            sidecar["aipp"] = {
                "aipp_mode": "static",
                "input_format": "YUV420SP_U8",
                "src_image_size_w": 224,
                "src_image_size_h": 224,
                "csc_switch": True,
                "rbuv_swap_switch": False,
                **CSC,
                **{f"mean_chn_{i}": 127 for i in range(3)},
                **{f"var_reci_chn_{i}": 1 / 128 for i in range(3)},
            }
        (work / f"{name}.json").write_text(json.dumps(sidecar))


def manifest(work: Path, images: Path, name: str, model: str, device_decode: bool) -> Path:
    m = work / f"{name}.toml"
    m.write_text(
        f"""
[job]
name = "{name}"
output = "{work / name}"
[dataset]
paths = ["{images}"]
[model]
path = "{work / model}"
input_size = 224
resize = 256
mean = 127.0
std = 128.0
[runtime]
backend = "acl"
devices = [0]
batch_size = 32
device_decode = {str(device_decode).lower()}
""",
        "utf-8",
    )
    return m


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion hits/n."""
    p = hits / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return mid - half, mid + half


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> str:
    if not a["image_id"].equals(b["image_id"]):
        sys.exit("the jobs listed different images; compare runs over the same folder")
    same = int((a["top1_label"] == b["top1_label"]).sum())
    lo, hi = wilson(same, len(a))
    return f"{same / len(a):.4f} ({same}/{len(a)}; 95% {lo:.3f}-{hi:.3f})"


def self_agreement(images: Path, work: Path) -> dict[str, float]:
    """Top-1 agreement of the float CPU path with itself under a half-pixel shift and bicubic resize."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from ascend_batch.preprocess import Preprocess, decode_pixels, normalise, resize_crop_geometry

    pp = Preprocess(size=224, resize=256, mean=(127.0,) * 3, std=(128.0,) * 3)
    sess = ort.InferenceSession(str(work / "lite0.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def variant(data: bytes, shift: float, resample: Image.Resampling) -> np.ndarray:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        nw, nh, left, top = resize_crop_geometry(w, h, pp)
        sx, sy = w / nw, h / nh
        box = (left * sx + shift, top * sy, (left + pp.size) * sx + shift, (top + pp.size) * sy)
        return normalise(np.asarray(img.resize((pp.size, pp.size), resample, box=box, reducing_gap=None)), pp)

    files = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg"))
    batches: dict[str, list[np.ndarray]] = {"ref": [], "shift": [], "bicubic": []}
    for f in files:
        data = f.read_bytes()
        batches["ref"].append(normalise(decode_pixels(data, pp).hwc, pp))
        batches["shift"].append(variant(data, 0.5, Image.Resampling.BILINEAR))
        batches["bicubic"].append(variant(data, 0.0, Image.Resampling.BICUBIC))
    top1 = {
        k: np.concatenate([sess.run(None, {name: np.stack(v[i : i + 50])})[0].argmax(1) for i in range(0, len(v), 50)])
        for k, v in batches.items()
    }
    return {k: float((top1[k] == top1["ref"]).mean()) for k in ("shift", "bicubic")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", type=Path)
    ap.add_argument("--labels", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dvpp-agreement"))
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    build_models(work)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)])}
    runs = {"cpu": ("lite0_plain.om", False), "host": ("lite0_aipp.om", False), "dvpp": ("lite0_aipp.om", True)}
    frames: dict[str, pd.DataFrame] = {}
    for name, (model, dd) in runs.items():
        m = manifest(work, args.images.resolve(), name, model, dd)
        r = subprocess.run([sys.executable, "-m", "ascend_batch", "run", str(m), "--restart", "--no-progress"],
                           env=env, capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            sys.exit(f"{name}: exit {r.returncode}\n{r.stderr}")
        frames[name] = pd.read_parquet(work / name).sort_values("image_id").reset_index(drop=True)
        summary = json.loads((work / name / "_summary.json").read_text())
        print(f"{name:5s} decoded on {summary['decoded_on']}; errors {summary['images']['error']}")
    base = frames["cpu"]
    truth = None
    if args.labels:
        lab = pd.read_csv(args.labels)
        truth = dict(zip(lab["file"].astype(str), lab["index"].astype(int), strict=True))
    for name in ("host", "dvpp"):
        df = frames[name]
        line = f"{name:5s} top-1 equal to the float CPU path's: {agreement(df, base)}"
        if truth is not None:
            for what, frame in (("cpu", base), (name, df)):
                idx = frame["image_id"].map(lambda s: truth.get(Path(s).name, truth.get(s, -1)))
                top1 = (frame["top5_index"].map(lambda t: int(t[0]) if len(t) else -2) == idx).mean()
                top5 = pd.Series([int(i) in list(t) for i, t in zip(idx, frame["top5_index"], strict=True)]).mean()
                line += f"; {what} top-1 {top1:.4f} top-5 {top5:.4f}"
        print(line)
    same_model = agreement(frames["dvpp"], frames["host"])
    print(f"dvpp  top-1 equal to host's (same AIPP model, device vs CPU decode): {same_model}")
    margin = base["top5_prob"].map(lambda t: float(t[0] - t[1]) if len(t) > 1 else 1.0)
    print(f"cpu   images whose top-1/top-2 probability margin is under 1%: {int((margin < 0.01).sum())}")
    for name in ("host", "dvpp"):
        moved = frames[name]["top1_label"] != base["top1_label"]
        widest = f"{margin[moved].max():.3f}" if moved.any() else "-"
        print(f"{name:5s} top-1s that differ from the float CPU path's: {int(moved.sum())}, widest margin {widest}")
    floor = self_agreement(args.images.resolve(), work)
    print(
        f"cpu   top-1 equal to itself with the crop shifted half a pixel: {floor['shift']:.4f}; "
        f"resized bicubic instead of bilinear: {floor['bicubic']:.4f}"
    )


if __name__ == "__main__":
    main()
