"""Bad image files: decided by decoding them when a dataset is built, skipped and counted.

Every fault is a real file, written here from a JPEG or PNG that Pillow encoded: cuts of
1, 10, 100 and 1,000 bytes, garbage, an empty file, text with an image suffix, PNG
checksums, a decompression-bomb header, unreadable files, bad zip members, and files
that change after the scan. The oracle is Pillow itself, decoding the file in full.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from captum_deconvviz.cli import main
from captum_deconvviz.data import ImageFiles, UnreadableImageError, ZipImages, _decode_problem


def _picture(size: int = 128) -> Image.Image:
    """Smooth gradients plus noise: a JPEG of ~9 KB and a PNG of ~42 KB, so a 1,000-byte cut is inside the data."""
    y, x = np.mgrid[0:size, 0:size]
    noise = np.random.default_rng(0).normal(0, 20, (size, size, 3))
    pixels = np.stack([2 * x, 2 * y, x + y], axis=-1) + noise
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _encoded(format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    _picture().save(buffer, format, **options)
    return buffer.getvalue()


JPEG = _encoded("JPEG", quality=90)
PNG = _encoded("PNG")


def _png_chunk(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset of the chunk's data, its length) for the first chunk of this kind."""
    position = 8
    while True:
        length, found = struct.unpack(">I4s", data[position : position + 8])
        if found == kind:
            return position + 8, length
        position += 12 + length


def _flip(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0xFF
    return bytes(damaged)


def _bad_crc(kind: bytes) -> bytes:
    """The PNG with the CRC of its first ``kind`` chunk wrong and every data byte intact."""
    start, length = _png_chunk(PNG, kind)
    return _flip(PNG, start + length)


def _bomb() -> bytes:
    """A valid PNG header for 30,000 x 30,000 pixels (over twice PIL's MAX_IMAGE_PIXELS), no real data."""
    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return PNG[:8] + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _pil_decodes(data: bytes) -> bool:
    """The oracle: Pillow's own full-size decode, truncated data refused (its default)."""
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


# name -> (the file's bytes, words the reason must contain)
FAULTS: dict[str, tuple[bytes, str]] = {
    **{f"jpeg_cut_{cut}.jpg": (JPEG[:-cut], "truncated") for cut in (1, 10, 100, 1000)},
    **{f"png_cut_{cut}.png": (PNG[:-cut], "truncated") for cut in (1, 10, 100, 1000)},
    "garbage.jpg": (np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not an image"),
    "empty.jpg": (b"", "empty file"),
    "text.png": (b"these are not the pixels you are looking for\n" * 20, "not an image"),
    "jpeg_header_then_garbage.jpg": (JPEG[:600] + np.random.default_rng(2).bytes(len(JPEG) - 600), "Error"),
    "png_bad_crc_idat.png": (_bad_crc(b"IDAT"), "bad CRC in its b'IDAT' chunk"),
    "png_bad_crc_ihdr.png": (_bad_crc(b"IHDR"), "bad CRC in its b'IHDR' chunk"),
    "png_bad_crc_iend.png": (_bad_crc(b"IEND"), "bad CRC in its b'IEND' chunk"),
    "png_damaged_idat.png": (_flip(PNG, _png_chunk(PNG, b"IDAT")[0] + 5000), "bad CRC"),
    "bomb.png": (_bomb(), "DecompressionBombError"),
}


def test_the_faults_are_real() -> None:
    """Each fault file is what its name says, and verify() alone passes the truncated JPEGs."""
    assert _pil_decodes(JPEG) and _pil_decodes(PNG) and len(JPEG) > 5000 and len(PNG) > 20_000
    for cut in (1, 10, 100, 1000):
        with Image.open(io.BytesIO(JPEG[:-cut])) as image:
            image.verify()  # the bug this file guards against: no error here
        assert not _pil_decodes(JPEG[:-cut])
    # PIL checks no CRC of the pixel data: this file decodes, to the right pixels even,
    # so only the CRC check refuses it; a damaged IDAT whose CRC is checked is found too.
    assert _pil_decodes(_bad_crc(b"IDAT")) and _pil_decodes(_bad_crc(b"IEND"))
    assert not _pil_decodes(FAULTS["png_damaged_idat.png"][0])


def _folder_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    (root / "good.jpg").write_bytes(JPEG)
    (root / "good.png").write_bytes(PNG)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _zip_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {"good.jpg": JPEG, "good.png": PNG, **files}.items():
            archive.writestr(name, data)
    return path


def _assert_only_the_good_files_kept(images: ImageFiles | ZipImages) -> None:
    assert images.names == ["good.jpg", "good.png"] and len(images) == 2
    for index, original in enumerate((JPEG, PNG)):
        image, label = images[index]
        expected = Image.open(io.BytesIO(original)).convert("RGB")
        assert label == -1 and np.array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.parametrize("load", [_folder_with, _zip_with], ids=["folder", "zip"])
@pytest.mark.parametrize("name", list(FAULTS))
def test_a_bad_file_is_skipped_and_counted(tmp_path: Path, name: str, load: Callable[..., Path]) -> None:
    data, reason = FAULTS[name]
    location = load(tmp_path, {name: data})
    images = ImageFiles(location) if location.is_dir() else ZipImages(location)
    _assert_only_the_good_files_kept(images)
    assert images.skipped == [name]
    assert reason in images.skip_reasons[name]


def test_every_fault_at_once_is_counted(tmp_path: Path) -> None:
    files = {name: data for name, (data, _) in FAULTS.items()}
    images = ImageFiles(_folder_with(tmp_path, files))
    _assert_only_the_good_files_kept(images)
    assert images.skipped == sorted(files) and set(images.skip_reasons) == set(files)
    limited = ImageFiles(tmp_path / "images", limit=1)  # the limit counts images kept, not files seen
    assert limited.names == ["good.jpg"]


@pytest.mark.parametrize("allowed", [True, False])
def test_truncation_is_refused_whatever_pils_global_flag_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: bool
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", allowed)
    files = {f"jpeg_cut_{cut}.jpg": JPEG[:-cut] for cut in (1, 10, 100, 1000)}
    files |= {"png_cut_100.png": PNG[:-100], "png_bad_crc_idat.png": _bad_crc(b"IDAT")}
    if allowed:  # the flag matters: with it, PIL itself takes a cut JPEG and fills in grey
        with Image.open(io.BytesIO(JPEG[:-1000])) as image:
            image.load()
    for images in (ImageFiles(_folder_with(tmp_path, files)), ZipImages(_zip_with(tmp_path, files))):
        _assert_only_the_good_files_kept(images)
        assert images.skipped == sorted(files)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is allowed  # left as it was found


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_the_cheap_scan_decides_as_a_full_decode_does(progressive: bool) -> None:
    """The scan decodes a JPEG at 1/8 scale; at every cut, and with damaged bytes, it decides as a full decode."""
    jpeg = _encoded("JPEG", quality=90, progressive=progressive)
    for cut in range(1, len(jpeg), 3):
        assert _decode_problem(jpeg[:-cut]) is not None and not _pil_decodes(jpeg[:-cut]), cut
    rng = np.random.default_rng(3)
    decisions = set()
    for at in rng.integers(2, len(jpeg), 300):
        damaged = _flip(jpeg, int(at))
        decodes = _pil_decodes(damaged)
        assert (_decode_problem(damaged) is None) == decodes, int(at)
        decisions.add(decodes)
    assert decisions == {True, False}  # both outcomes were met, so the comparison meant something


def test_other_image_modes_are_kept() -> None:
    """No false alarm: grey, palette, alpha, 16-bit, 1-bit and CMYK images decode and are kept."""
    grey = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 13 % 65536).astype(np.uint16))
    pictures = [
        (grey, "PNG"),
        (_picture().convert("L"), "JPEG"),
        (_picture().convert("P"), "PNG"),
        (_picture().convert("RGBA"), "PNG"),
        (_picture().convert("1"), "PNG"),
        (_picture().convert("CMYK"), "JPEG"),
        (_picture(), "GIF"),
    ]
    for picture, format in pictures:
        buffer = io.BytesIO()
        picture.save(buffer, format)
        assert _decode_problem(buffer.getvalue()) is None, (picture.mode, format)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_skipped(tmp_path: Path) -> None:
    root = _folder_with(tmp_path, {"locked.jpg": JPEG})
    (root / "locked.jpg").chmod(0)
    try:
        images = ImageFiles(root)
    finally:
        (root / "locked.jpg").chmod(0o644)
    _assert_only_the_good_files_kept(images)
    assert images.skipped == ["locked.jpg"] and "cannot be read" in images.skip_reasons["locked.jpg"]


def test_a_dangling_link_is_skipped(tmp_path: Path) -> None:
    root = _folder_with(tmp_path, {})
    (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    images = ImageFiles(root)
    _assert_only_the_good_files_kept(images)
    assert images.skipped == ["gone.jpg"] and "cannot be read" in images.skip_reasons["gone.jpg"]


def test_a_zip_member_with_a_bad_crc_is_skipped(tmp_path: Path) -> None:
    path = _zip_with(tmp_path, {"flipped.jpg": JPEG})
    archive = path.read_bytes()
    at = archive.rindex(JPEG[2000:2100]) + 50  # stored uncompressed: the member's bytes are in the archive
    path.write_bytes(_flip(archive, at))
    images = ZipImages(path)
    _assert_only_the_good_files_kept(images)
    assert images.skipped == ["flipped.jpg"] and "Bad CRC-32" in images.skip_reasons["flipped.jpg"]
    (tmp_path / "not.zip").write_bytes(JPEG)
    with pytest.raises(ValueError, match="not.zip' is not a readable zip archive"):
        ZipImages(tmp_path / "not.zip")


@pytest.mark.parametrize("allowed", [True, False])
@pytest.mark.parametrize("change", ["deleted", "truncated", "garbage"])
def test_a_file_that_goes_bad_after_the_scan_raises_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, allowed: bool
) -> None:
    root = _folder_with(tmp_path, {})
    images = ImageFiles(root)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", allowed)
    target = root / "good.png"
    if change == "deleted":
        target.unlink()
    else:
        target.write_bytes(PNG[:-1000] if change == "truncated" else b"\0" * 100)
    images[0]  # the other file still decodes
    expected = rf"image 1 \({re.escape(str(target))}\) no longer decodes"
    with pytest.raises(UnreadableImageError, match=expected) as caught:
        images[1]
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no PIL traceback under it
    assert "\n" not in str(caught.value) and caught.value.filename == str(target)  # an OSError about this file
    assert ImageFile.LOAD_TRUNCATED_IMAGES is allowed
    with pytest.raises(IndexError):  # a bad index stays a bad index
        images[2]


def test_deconvviz_mine_finishes_and_says_how_many_were_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {name: FAULTS[name][0] for name in ("empty.jpg", "garbage.jpg", "jpeg_cut_1.jpg", "png_bad_crc_idat.png")}
    root = _folder_with(tmp_path, files)
    for i in range(4):
        _picture().rotate(90 * i).save(root / f"more{i}.png")
    out = tmp_path / "result.pt"
    assert main(["mine", "--data", str(root), "--layers", "features.4", "--k", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 4 unreadable file(s), e.g. empty.jpg" in err
    assert out.is_file()
