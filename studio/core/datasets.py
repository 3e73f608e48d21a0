"""More data set kinds: image folders (one sub-folder per class) and Python `module:function`
data sets / evaluators. `evaluate.load_dataset` dispatches here.

Images are read with Pillow when it is installed. Without it, .npy arrays, PNG (8/16-bit, any
colour type except palette-with-transparency subtleties) and PGM/PPM are decoded here; JPEG and
other formats then need Pillow and say so.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from studio.core.errors import DatasetError
from studio.core.evaluate import Dataset
from studio.core.metrics import Metric

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".npy"}
PREPROCESS_FILE = "preprocess.json"
_PREPROCESS_KEYS = {"size", "mean", "std", "layout", "grayscale", "input_name", "scale"}


# ----------------------------------------------------------------------------- image decoding


def _has_pillow() -> bool:
    return importlib.util.find_spec("PIL") is not None


def read_png(path: Path) -> np.ndarray:
    """Decode a non-interlaced PNG with zlib + numpy: [H, W] or [H, W, C], uint8 or uint16."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise DatasetError(f"{path}: not a PNG file")
    pos, idat, palette = 8, [], None
    width = height = depth = ctype = interlace = None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif tag == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if width is None or not idat:
        raise DatasetError(f"{path}: truncated PNG file")
    if interlace:
        raise DatasetError(f"{path}: interlaced PNG needs Pillow", hint="pip install pillow")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    if depth < 8 and ctype != 0 and ctype != 3:
        raise DatasetError(f"{path}: unsupported PNG bit depth {depth}", hint="pip install pillow")
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    except zlib.error as e:
        raise DatasetError(f"{path}: corrupt PNG data ({e})") from e
    row_bits = width * channels * depth
    stride = (row_bits + 7) // 8
    bpp = max(1, channels * depth // 8)  # bytes per complete pixel, for the filters
    if raw.size < height * (stride + 1):
        raise DatasetError(f"{path}: truncated PNG data")
    rows = raw[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        f, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 0xFF
        elif f == 1:  # Sub: a running sum per byte position within the pixel
            cur = (
                np.cumsum(np.pad(line, (0, (-stride) % bpp)).reshape(-1, bpp), axis=0).ravel()[:stride] & 0xFF
            )
        elif f in (3, 4):  # Average / Paeth depend on the decoded left byte: plain Python loop
            c_line, up = line.tolist(), prev.tolist()
            for x in range(stride):
                a = c_line[x - bpp] if x >= bpp else 0
                b = up[x]
                if f == 3:
                    c_line[x] = (c_line[x] + ((a + b) >> 1)) & 0xFF
                else:
                    c = up[x - bpp] if x >= bpp else 0
                    p_ = a + b - c
                    pa, pb, pc = abs(p_ - a), abs(p_ - b), abs(p_ - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    c_line[x] = (c_line[x] + pred) & 0xFF
            cur = np.array(c_line, np.int32)
        else:
            raise DatasetError(f"{path}: corrupt PNG (filter {f})")
        out[y] = cur
        prev = cur
    buf = out.astype(np.uint8)
    if depth == 16:
        img = buf.reshape(height, -1).view(">u2").astype(np.uint16).reshape(height, width, channels)
    elif depth == 8:
        img = buf.reshape(height, width, channels)
    else:  # 1/2/4-bit grey or palette
        bits = np.unpackbits(buf, axis=1)[:, :row_bits].reshape(height, width, depth)
        vals = (bits * (1 << np.arange(depth - 1, -1, -1))).sum(-1).astype(np.uint8)
        img = vals[..., None] if ctype == 3 else (vals * (255 // ((1 << depth) - 1)))[..., None]
    if ctype == 3:
        if palette is None:
            raise DatasetError(f"{path}: palette PNG without a palette")
        img = palette[img[..., 0]]
    return img[..., 0] if img.shape[-1] == 1 else img


def _read_netpbm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    m = re.match(rb"(P[56])\s+(?:#.*\s+)*(\d+)\s+(\d+)\s+(\d+)\s", data)
    if not m:
        raise DatasetError(f"{path}: only binary PGM/PPM (P5/P6) are read without Pillow")
    w, h, maxval = int(m.group(2)), int(m.group(3)), int(m.group(4))
    ch = 1 if m.group(1) == b"P5" else 3
    dt = np.dtype(">u2") if maxval > 255 else np.uint8
    arr = np.frombuffer(data[m.end() : m.end() + w * h * ch * dt.itemsize], dt)
    if arr.size != w * h * ch:
        raise DatasetError(f"{path}: truncated image")
    arr = arr.reshape(h, w, ch) if ch == 3 else arr.reshape(h, w)
    return arr.astype(np.uint16) if maxval > 255 else arr


def read_image(path: Path) -> np.ndarray:
    """[H, W] or [H, W, C] array (uint8/uint16, or the .npy file's own dtype)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except Exception as e:
            raise DatasetError(f"{path}: not a readable .npy array ({type(e).__name__})") from e
    if _has_pillow():
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "RGB", "RGBA", "I;16", "LA"):
                    im = im.convert("RGB")
                return np.asarray(im)
        except Exception as e:
            raise DatasetError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if suffix == ".png":
        return read_png(path)
    if suffix in (".pgm", ".ppm"):
        return _read_netpbm(path)
    raise DatasetError(
        f"{path}: reading {suffix} images needs Pillow",
        hint="pip install pillow, or convert the images to .png or .npy",
    )


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [H, W] or [H, W, C] (half-pixel centres, like PIL/cv2) in float32."""
    h, w = img.shape[:2]
    oh, ow = int(size[0]), int(size[1])
    a = img.astype(np.float32)
    if (h, w) == (oh, ow):
        return a
    ys = np.clip((np.arange(oh) + 0.5) * h / oh - 0.5, 0, h - 1)
    xs = np.clip((np.arange(ow) + 0.5) * w / ow - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    if a.ndim == 3:
        wy, wx = wy[..., None], wx[..., None]
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bot = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


# ----------------------------------------------------------------------------- image folders


def _read_preprocess(folder: Path) -> dict:
    f = folder / PREPROCESS_FILE
    if not f.exists():
        return {}
    try:
        spec = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{f}: not valid JSON ({e})") from e
    if not isinstance(spec, dict):
        raise DatasetError(f"{f}: expected a JSON object with keys {sorted(_PREPROCESS_KEYS)}")
    unknown = set(spec) - _PREPROCESS_KEYS
    if unknown:
        raise DatasetError(f"{f}: unknown keys {sorted(unknown)}; allowed: {sorted(_PREPROCESS_KEYS)}")
    return spec


def _to_float(img: np.ndarray, scale: float | None) -> np.ndarray:
    """Pixels -> floats in [0, 1] for integer images (by their dtype's range), unless `scale` given."""
    if scale is not None:
        return img.astype(np.float32) * np.float32(scale)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32)


def load_image_folder(
    path: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    mean: float | list[float] | None = None,
    std: float | list[float] | None = None,
    layout: str | None = None,
    grayscale: bool | None = None,
    input_name: str | None = None,
    scale: float | None = None,
) -> Dataset:
    """A folder with one sub-folder per class (labels = sorted folder names, 0..K-1), or a flat
    folder of images (no labels). Pixels are scaled to [0, 1] (uint8 / 255), resized to `size`
    (H, W), normalised with (x - mean) / std per channel and laid out NCHW or NHWC.

    Settings not given as arguments come from `preprocess.json` in the folder (same key names),
    then the defaults: native size, mean 0, std 1, NCHW, colour, input name "input"."""
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    spec = _read_preprocess(folder)
    size = size if size is not None else spec.get("size")
    mean = mean if mean is not None else spec.get("mean", 0.0)
    std = std if std is not None else spec.get("std", 1.0)
    layout = (layout or spec.get("layout") or "NCHW").upper()
    grayscale = bool(grayscale if grayscale is not None else spec.get("grayscale", False))
    input_name = input_name or spec.get("input_name") or "input"
    scale = scale if scale is not None else spec.get("scale")
    if layout not in ("NCHW", "NHWC"):
        raise DatasetError(f"{folder}: layout must be NCHW or NHWC, got {layout!r}")

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, int | None]] = []
    for ci, c in enumerate(classes):
        files += [(f, ci) for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not classes:
        files = [(f, None) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetError(
            f"no images found in {folder}",
            hint="put images in one sub-folder per class (png/jpg/npy), or pass an .npz",
        )

    arrays = []
    for f, _ in files:
        img = read_image(f)
        if img.ndim == 3 and img.shape[-1] in (2, 4):  # drop alpha
            img = img[..., : img.shape[-1] - 1]
        x = _to_float(img, scale)
        if grayscale and x.ndim == 3:
            x = x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32) if x.shape[-1] >= 3 else x[..., 0]
        if not grayscale and x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=-1)
        if size is not None:
            x = resize_bilinear(x, tuple(size))
        if x.ndim == 2:
            x = x[..., None]
        arrays.append(x)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DatasetError(
            f"{folder}: images have different sizes {sorted(shapes)[:3]}",
            hint='give a size (H, W) or put {"size": [H, W]} in preprocess.json',
        )
    x = np.stack(arrays).astype(np.float32)  # N, H, W, C
    mean_a = np.asarray(mean, np.float32).reshape(-1)
    std_a = np.asarray(std, np.float32).reshape(-1)
    if np.any(std_a == 0):
        raise DatasetError(f"{folder}: std must not be 0")
    for name, v in (("mean", mean_a), ("std", std_a)):
        if v.size not in (1, x.shape[-1]):
            raise DatasetError(f"{folder}: {name} has {v.size} values for {x.shape[-1]} channels")
    x = (x - mean_a) / std_a
    if layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    labels = None if files[0][1] is None else np.array([lab for _, lab in files], np.int64)
    return Dataset(
        {input_name: x},
        labels,
        str(folder),
        {"classes": classes, "layout": layout, "size": list(x.shape[1:])},
    )


# ----------------------------------------------------------------------------- python specs


def _resolve(spec: str, what: str) -> Callable:
    """Import `package.module:function` or `path/to/file.py:function`; DatasetError on failure."""
    if ":" not in spec:
        raise DatasetError(f"{what} {spec!r} must look like package.module:function")
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name).expanduser().resolve()
            if not file.is_file():
                raise FileNotFoundError(f"no such file {file}")
            mod_id = "_studio_data_" + re.sub(r"\W", "_", file.stem)
            mspec = importlib.util.spec_from_file_location(mod_id, file)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mod_id] = module
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except Exception as e:
        raise DatasetError(
            f"cannot import {what} {spec!r}: {type(e).__name__}: {e}",
            hint="check the module is on PYTHONPATH (or give a path/to/file.py:function)",
        ) from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DatasetError(f"{what} {spec!r}: module {mod_name!r} has no function {attr!r}")
    return fn


def load_python_dataset(spec: str) -> Dataset:
    """Call `module:function` (no arguments); it returns a Dataset, or (inputs, labels) with
    inputs a dict of arrays keyed by model input name (labels may be None), or just the dict."""
    fn = _resolve(spec, "data set")
    try:
        out = fn()
    except Exception as e:
        raise DatasetError(f"data set {spec!r} raised {type(e).__name__}: {e}") from e
    if isinstance(out, Dataset):
        if out.source == "in-memory":
            out.source = spec
        return out
    labels = None
    if isinstance(out, tuple) and len(out) == 2:
        out, labels = out
    if not isinstance(out, dict) or not out:
        raise DatasetError(
            f"data set {spec!r} returned {type(out).__name__}; expected a Dataset or (dict of arrays, labels)"
        )
    inputs = {str(k): np.asarray(v) for k, v in out.items()}
    lens = {len(v) for v in inputs.values()}
    if len(lens) != 1:
        raise DatasetError(f"data set {spec!r}: arrays have different sample counts {sorted(lens)}")
    return Dataset(inputs, None if labels is None else np.asarray(labels).astype(np.int64), spec)


def load_evaluator(spec: str) -> Callable:
    """Resolve `module:function(outputs: list[ndarray], dataset) -> list[Metric]`."""
    return _resolve(spec, "evaluator")


def run_evaluator(spec: str, outputs: list[np.ndarray], ds: Dataset) -> list[Metric]:
    """Call a user evaluator and check it returned Metrics (so every number says what it is)."""
    fn = load_evaluator(spec)
    try:
        res = fn(outputs, ds)
    except Exception as e:
        raise DatasetError(f"evaluator {spec!r} raised {type(e).__name__}: {e}") from e
    if isinstance(res, Metric):
        res = [res]
    if not isinstance(res, list | tuple) or not all(isinstance(m, Metric) for m in res):
        raise DatasetError(
            f"evaluator {spec!r} must return a list of studio.core.metrics.Metric, got {type(res).__name__}"
        )
    return list(res)
