"""Pure image facts: can a file be decoded, and what does it become once prepared.

Inputs: an image file (or an already-decoded pixel array, for IDX sources) and
the target size and colour mode. Outputs: an `ImageFacts` value; nothing is
written. `prepare` runs these functions in worker processes.

Decisions worth knowing:

- A file is decoded fully (`img.load()`) with Pillow's safety limits in force:
  truncated files fail (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False) and
  an image larger than ``Image.MAX_IMAGE_PIXELS`` is a `decompression_bomb`
  that is never loaded (Pillow's warning is treated as the error it warns of);
  its row still records the width, height and mode its header declares.
- Transparency is composited onto a white background, not dropped: a
  transparent PNG's hidden colour under alpha 0 is arbitrary (often black),
  and dropping alpha would turn a dark drawing on a clear background into
  black on black.
- 16- and 32-bit integer images (``I;16*``, ``I``) are taken as 16-bit data
  and scaled by 255/65535; float images (``F``) are taken as 0..1 when their
  maximum is at most 1, else as 0..255. Animated images use their first frame.
- The EXIF orientation tag is applied (`ImageOps.exif_transpose`): cameras and
  phones store many JPEGs sideways with a tag saying how to turn them, and a
  viewer shows them upright, so the model does too. The recorded width and
  height are those of the upright image. A broken EXIF block is ignored.
- Resizing is bilinear to exactly (height, width) without keeping the aspect
  ratio, as Keras's `image_dataset_from_directory` does by default.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.prepared import STATUS_OK

ColorMode = Literal["grayscale", "rgb"]
RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class ImageFacts:
    """What `prepare` records about one image; `pixels` is None unless status is ok."""

    status: str
    error: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    bytes: int = 0
    pixel_hash: str = ""
    phash: str = ""
    pixel_mean: float = 0.0
    pixel_std: float = 0.0
    pixels: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


# Pillow modes that carry colour ("P" only when its palette has colour).
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBa"})


def has_colour(path: Path | str) -> bool:
    """Whether an image file is in colour, from its header (and palette); False when it
    cannot be opened (prepare reports why)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "PA"):
                palette = img.getpalette() or []
                rgb = zip(palette[0::3], palette[1::3], palette[2::3], strict=False)
                return any(not (r == g == b) for r, g, b in rgb)
            return img.mode in COLOUR_MODES
    except Exception:  # noqa: BLE001 - any unreadable file: not evidence of colour
        return False


def target_mode(color_mode: ColorMode) -> str:
    """params.yaml's colour mode -> the Pillow mode of prepared images."""
    return "L" if color_mode == "grayscale" else "RGB"


def convert_image(img: Image.Image, color_mode: ColorMode) -> Image.Image:
    """Any Pillow mode -> 'L' or 'RGB' (see the module docstring for the rules)."""
    mode = target_mode(color_mode)
    if img.mode == mode:
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_wide_to_uint8(img), mode="L").convert(mode)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode not in ("L", "RGB", "1"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    return img.convert(mode)


def _wide_to_uint8(img: Image.Image) -> np.ndarray:
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    return np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)


def prepare_image(
    img: Image.Image, image_size: tuple[int, int], color_mode: ColorMode
) -> np.ndarray:
    """A decoded image -> uint8 pixels of shape (height, width, channels)."""
    img = convert_image(img, color_mode)
    height, width = image_size
    if img.size != (width, height):
        img = img.resize((width, height), RESAMPLE)
    pixels = np.asarray(img, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.ascontiguousarray(pixels)


def pixel_facts(pixels: np.ndarray) -> dict[str, object]:
    """Hashes and brightness statistics of prepared (h, w, c) uint8 pixels."""
    channels = pixels.shape[2]
    img = Image.fromarray(
        pixels[..., 0] if channels == 1 else pixels, mode="L" if channels == 1 else "RGB"
    )
    return {
        "pixel_hash": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "phash": _hex(imagehash.phash(img)),
        "pixel_mean": float(pixels.mean()),
        "pixel_std": float(pixels.std()),
    }


def _hex(image_hash: imagehash.ImageHash) -> str:
    # Same digits as str(image_hash) (row-major bits, big-endian), several times faster.
    return np.packbits(image_hash.hash.flatten()).tobytes().hex()


def check_array(
    array: np.ndarray, image_size: tuple[int, int], color_mode: ColorMode, nbytes: int | None = None
) -> ImageFacts:
    """Facts of an already-decoded uint8 image (an IDX record): (h, w) or (h, w, 3)."""
    img = Image.fromarray(np.ascontiguousarray(array))
    pixels = prepare_image(img, image_size, color_mode)
    return ImageFacts(
        status=STATUS_OK,
        width=img.width,
        height=img.height,
        mode=img.mode,
        bytes=int(array.nbytes if nbytes is None else nbytes),
        pixels=pixels,
        **pixel_facts(pixels),
    )


def check_file(path: Path | str, image_size: tuple[int, int], color_mode: ColorMode) -> ImageFacts:
    """Decode one file safely and describe it; never raises for a bad file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ImageFacts(status="corrupt", error=f"cannot read: {exc.strerror or exc}")
    if size == 0:
        return ImageFacts(status="empty_file", error="file is empty (0 bytes)")
    width = height = 0
    mode = ""
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; we refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height, mode = img.width, img.height, img.mode
                img.load()  # forces a full decode, so truncation shows up here
                width, height = _upright(img)
                pixels = prepare_image(img, image_size, color_mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        width, height, mode = _declared_size(path)
        return ImageFacts(
            status="decompression_bomb",
            error=str(exc),
            width=width,
            height=height,
            mode=mode,
            bytes=size,
        )
    except UnidentifiedImageError:
        status = "not_image" if _looks_like_text(path) else "corrupt"
        reason = (
            "a text file, not an image"
            if status == "not_image"
            else "not a recognisable image format"
        )
        return ImageFacts(status=status, error=reason, bytes=size)
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        message = str(exc) or type(exc).__name__
        status = "truncated" if "truncated" in message.lower() else "corrupt"
        return ImageFacts(
            status=status, error=message, width=width, height=height, mode=mode, bytes=size
        )
    return ImageFacts(
        status=STATUS_OK,
        width=width,
        height=height,
        mode=mode,
        bytes=size,
        pixels=pixels,
        **pixel_facts(pixels),
    )


def _upright(img: Image.Image) -> tuple[int, int]:
    """Turn a loaded image as its EXIF orientation tag says, in place; returns its new size."""
    # A broken EXIF block leaves the pixels as stored.
    with contextlib.suppress(SyntaxError, ValueError, TypeError, KeyError, struct.error):
        ImageOps.exif_transpose(img, in_place=True)
    return img.width, img.height


def _declared_size(path: Path) -> tuple[int, int, str]:
    """Width, height and mode from the header of an image refused as a bomb.

    Pillow refuses such a file inside `Image.open`, before it tells the size,
    so the header is read again with the pixel limit lifted. Only the header
    is read (never `load()`), and the limit is put back before returning;
    `prepare`'s workers check one file at a time, so no other open runs unguarded.
    """
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            return img.width, img.height, img.mode
    except (OSError, SyntaxError, ValueError, EOFError):
        return 0, 0, ""
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _looks_like_text(path: Path, probe: int = 4096) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(probe)
    except OSError:
        return False
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the probe boundary is still text.
        return exc.start >= len(head) - 3
    return True
