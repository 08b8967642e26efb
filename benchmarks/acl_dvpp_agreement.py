"""DVPP + AIPP against the CPU path, on real images, through the emulated pyACL (tests/fakes/acl).

Builds the default model (EfficientNet-Lite0) twice as an emulated ``.om`` (an ONNX file; the emulator
runs it with onnxruntime): a plain float model, and an AIPP model whose sidecar holds the aipp.cfg of
the README (YUV420SP in, the default model's mean 127 / std 128). Runs three jobs through the real CLI:

  cpu   acl, plain model, CPU decode (today's float path)
  host  acl, AIPP model, device_decode = false (CPU decode, NV12 made on the host)
  dvpp  acl, AIPP model, device_decode = true (JPEGD + VPC emulated with Pillow/numpy)

and prints top-1 agreement with the CPU path, top-1/top-5 accuracy when labels are given, and where the
images were decoded. Figures from the emulator say that the pipeline's geometry, colour conversion and
fallbacks are right; they say nothing about speed on an NPU.

    python benchmarks/acl_dvpp_agreement.py ../shared/data/imagenet-sample \
        --labels ../shared/data/imagenet-sample/labels.csv --work /tmp/dvpp-agreement
"""

from __future__ import annotations

import argparse
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
        agree = (df["top1_label"] == base["top1_label"]).mean()
        line = f"{name:5s} top-1 equal to the CPU path's: {agree:.4f}"
        if truth is not None:
            for what, frame in (("cpu", base), (name, df)):
                idx = frame["image_id"].map(lambda s: truth.get(Path(s).name, truth.get(s, -1)))
                top1 = (frame["top5_index"].map(lambda t: int(t[0]) if len(t) else -2) == idx).mean()
                top5 = pd.Series([int(i) in list(t) for i, t in zip(idx, frame["top5_index"], strict=True)]).mean()
                line += f"; {what} top-1 {top1:.4f} top-5 {top5:.4f}"
        print(line)


if __name__ == "__main__":
    main()
