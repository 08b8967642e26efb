"""``ascend-batch demo``: real photos shipped by scikit-image, written to a folder and a tar,
then classified offline with the default model."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from .errors import StartupError

# skimage.data file -> name in the demo dataset
PHOTOS = {
    "chelsea.png": "cat-chelsea.jpg",
    "coffee.png": "coffee.jpg",
    "motorcycle_left.png": "motorcycle.png",
}
TAR_PHOTOS = {"rocket.jpg": "rocket.jpg", "astronaut.png": "astronaut.png"}

MANIFEST = """\
# The demo job: photos shipped by scikit-image, one folder and one tar, classified offline.
[job]
name = "demo"
output = "results"

[dataset]
paths = ["photos", "photos.tar"]

[model]
name = "efficientnet_lite0"

[runtime]
backend = "onnxruntime"
devices = ["cpu:0"]
batch_size = 8
unit_size = 4
"""


def _photo_bytes(name: str, target: str) -> bytes:
    try:
        from importlib import resources

        from PIL import Image

        src = resources.files("skimage.data").joinpath(name).read_bytes()
    except (ImportError, ModuleNotFoundError, FileNotFoundError) as exc:
        raise StartupError(
            "the demo's photos come from scikit-image: install it with  pip install 'ascend-batch[demo]'"
        ) from exc
    if Path(target).suffix == Path(name).suffix:
        return src
    img = Image.open(io.BytesIO(src)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if target.endswith(".jpg") else "PNG", quality=95)
    return buf.getvalue()


def materialise(folder: Path) -> Path:
    """Write the demo photos, tar and manifest under ``folder``; returns the manifest path."""
    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name, target in PHOTOS.items():
        (photos / target).write_bytes(_photo_bytes(name, target))
    tar_path = folder / "photos.tar"
    tmp = tar_path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, target in TAR_PHOTOS.items():
            data = _photo_bytes(name, target)
            info = tarfile.TarInfo(f"space/{target}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(tar_path)
    manifest = folder / "demo.toml"
    manifest.write_text(MANIFEST, "utf-8")
    return manifest
