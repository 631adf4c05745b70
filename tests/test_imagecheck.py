"""pipeline.imagecheck: every mode converts; every kind of bad file gets its status."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from pipeline.imagecheck import check_array, check_file, convert_image, pixel_facts, prepare_image
from pipeline.prepared import BAD_STATUSES

SIZE = (6, 5)  # (height, width): not square, so a swapped axis would show


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _gradient(mode: str = "L") -> Image.Image:
    pixels = np.arange(8 * 10, dtype=np.uint8).reshape(8, 10) * 3
    return Image.fromarray(pixels, mode="L").convert(mode)


@pytest.mark.parametrize("color_mode,channels", [("grayscale", 1), ("rgb", 3)])
@pytest.mark.parametrize(
    "mode", ["L", "RGB", "RGBA", "LA", "P", "CMYK", "1", "I;16", "I", "F", "YCbCr"]
)
def test_every_mode_converts_to_target_shape(mode: str, color_mode: str, channels: int) -> None:
    if mode == "I;16":
        img = Image.fromarray(np.full((8, 10), 40000, dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(np.full((8, 10), 65535, dtype=np.int32), mode="I")
    elif mode == "F":
        img = Image.fromarray(np.full((8, 10), 0.5, dtype=np.float32), mode="F")
    else:
        img = _gradient(mode)
    assert img.mode == mode
    pixels = prepare_image(img, SIZE, color_mode)
    assert pixels.shape == (*SIZE, channels)
    assert pixels.dtype == np.uint8


def test_sixteen_bit_scales_to_full_range() -> None:
    img = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert np.asarray(convert_image(img, "grayscale")).tolist() == [[0, 255]]


def test_float_image_in_unit_range_scales_to_255() -> None:
    img = Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32), mode="F")
    assert np.asarray(convert_image(img, "grayscale")).tolist() == [[0, 255]]


def test_transparent_pixels_become_white_not_black() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # black, fully transparent
    rgba[0, 0] = (0, 0, 0, 255)  # one opaque black pixel
    out = np.asarray(convert_image(Image.fromarray(rgba, mode="RGBA"), "grayscale"))
    assert out[0, 0] == 0
    assert out[1, 1] == 255


def test_palette_with_transparency_is_composited(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    path = _save(img, tmp_path / "p.png", transparency=0)
    facts = check_file(path, (4, 4), "grayscale")
    assert facts.ok and facts.mode == "P"
    assert int(facts.pixels.min()) == 255


def test_grayscale_replicates_into_rgb() -> None:
    pixels = prepare_image(_gradient("L"), (8, 10), "rgb")
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("L", (8, 8), value) for value in (10, 200, 90)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    facts = check_file(path, (8, 8), "grayscale")
    assert facts.ok
    assert abs(facts.pixel_mean - 10) < 2


def test_good_png_facts(tmp_path: Path) -> None:
    path = _save(_gradient("RGB"), tmp_path / "a.png")
    facts = check_file(path, SIZE, "grayscale")
    assert facts.ok and facts.error == ""
    assert (facts.width, facts.height, facts.mode) == (10, 8, "RGB")
    assert facts.bytes == path.stat().st_size
    assert facts.pixel_hash == hashlib.sha256(facts.pixels.tobytes()).hexdigest()
    assert len(facts.phash) == 16 and int(facts.phash, 16) >= 0
    assert facts.phash == str(imagehash.phash(Image.fromarray(facts.pixels[..., 0])))
    assert facts.pixel_mean == pytest.approx(float(facts.pixels.mean()))
    assert facts.pixel_std == pytest.approx(float(facts.pixels.std()))


def test_same_pixels_in_other_format_hash_equal(tmp_path: Path) -> None:
    a = check_file(_save(_gradient(), tmp_path / "a.png"), SIZE, "grayscale")
    b = check_file(_save(_gradient(), tmp_path / "b.bmp"), SIZE, "grayscale")
    c = check_array(np.asarray(_gradient()), SIZE, "grayscale")
    assert a.pixel_hash == b.pixel_hash == c.pixel_hash
    assert c.mode == "L" and c.bytes == 80


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name,content,status",
    [
        ("zero.png", b"", "empty_file"),
        ("trunc.png", _encoded("PNG")[:2000], "truncated"),
        ("trunc.jpg", _encoded("JPEG")[:800], "truncated"),
        (
            "random.png",
            np.random.default_rng(2).integers(0, 256, 500, dtype=np.uint8).tobytes(),
            "corrupt",
        ),
        ("notes.png", b"this is a text file, not a picture\n" * 5, "not_image"),
    ],
)
def test_bad_files_get_their_status(tmp_path: Path, name: str, content: bytes, status: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    facts = check_file(path, SIZE, "grayscale")
    assert facts.status == status
    assert status in BAD_STATUSES
    assert facts.error
    assert facts.pixels is None and facts.pixel_hash == ""


def test_truncated_png_keeps_header_facts(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    path.write_bytes(_encoded("PNG")[:2000])
    facts = check_file(path, SIZE, "grayscale")
    assert (facts.width, facts.height, facts.mode) == (48, 48, "RGB")


def test_missing_file_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    assert check_file(tmp_path / "nope.png", SIZE, "grayscale").status == "corrupt"


@pytest.mark.parametrize("limit", [2000, 1600], ids=["warning_range", "error_range"])
def test_decompression_bomb_is_refused_unloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    # 80x45 = 3600 pixels. Pillow only warns between the limit and twice the
    # limit (limit 2000) and raises beyond it (limit 1600): both are bombs here.
    path = _save(Image.new("RGB", (80, 45), 0), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    facts = check_file(path, SIZE, "grayscale")
    assert facts.status == "decompression_bomb"
    assert facts.pixels is None
    assert "pixels" in facts.error
    # The row still says what the header declares (not square: no swapped axes).
    assert (facts.width, facts.height, facts.mode) == (80, 45, "RGB")
    assert facts.bytes == path.stat().st_size
    assert limit == Image.MAX_IMAGE_PIXELS  # the limit is in force again afterwards


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 10 wide and 6 high, black left half and white right half;
    # orientation 6 says "rotate 90 degrees clockwise to display".
    stored = np.zeros((6, 10), dtype=np.uint8)
    stored[:, 5:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = _save(Image.fromarray(stored, mode="L"), tmp_path / "phone.jpg", exif=exif, quality=95)
    facts = check_file(path, (10, 6), "grayscale")
    assert facts.ok
    assert (facts.width, facts.height) == (6, 10)  # as displayed: upright
    upright = np.rot90(stored, k=-1)  # clockwise: the black left half ends up on top
    assert np.abs(facts.pixels[..., 0].astype(int) - upright).mean() < 10


def test_invalid_exif_orientation_leaves_the_image_as_stored(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 9  # not an orientation
    path = _save(_gradient(), tmp_path / "odd.jpg", exif=exif)
    facts = check_file(path, SIZE, "grayscale")
    assert facts.ok and (facts.width, facts.height) == (10, 8)


def test_bomb_limit_not_hit_by_normal_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(Image.new("L", (10, 10), 0), tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40)
    assert check_file(path, SIZE, "grayscale").ok


@pytest.mark.parametrize("seed", range(20))
def test_phash_hex_matches_imagehash_including_leading_zeros(seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    if seed == 0:
        pixels[:] = 0  # a blank image hashes to all zeros: the digits must still be 16
    facts = pixel_facts(pixels)
    assert facts["phash"] == str(imagehash.phash(Image.fromarray(pixels[..., 0])))
    assert len(facts["phash"]) == 16
