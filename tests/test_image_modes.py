"""Images of every PIL mode become the RGB a user expects, not PIL's clipped conversion.

``Image.convert("RGB")`` clips wider grey values at 255: a 16-bit grey PNG (0-65535) came
out all white. The oracle is the hand-computed scaling of the pixel values written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captum_deconvviz.data import ImageFiles, rgb_image
from captum_deconvviz.zoo import default_transform

RAMP16 = (np.arange(8 * 8, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63,000


def _read(path: Path) -> np.ndarray:
    """The image as the package's folder reader gives it (RGB, uint8)."""
    images = ImageFiles(path.parent)
    assert images.skipped == [], images.skip_reasons
    return np.asarray(images[images.names.index(path.name)][0])


def _grey(expected: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(expected).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"grey16{suffix}"
    Image.fromarray(RAMP16).save(path)
    assert Image.open(path).mode.startswith("I;16")
    got = _read(path)
    np.testing.assert_array_equal(got, _grey(RAMP16 * 255.0 / 65535.0))
    assert (got == 255).mean() < 0.02  # PIL's own conversion: 98% white


def test_wide_int_grey_is_scaled_and_narrow_int_grey_kept(tmp_path: Path) -> None:
    wide, narrow = tmp_path / "wide.tif", tmp_path / "narrow.tif"
    Image.fromarray(RAMP16.astype(np.int32), "I").save(wide)
    small = np.arange(64, dtype=np.int32).reshape(8, 8) * 4
    Image.fromarray(small, "I").save(narrow)
    assert Image.open(wide).mode == "I" == Image.open(narrow).mode
    np.testing.assert_array_equal(_read(wide), _grey(RAMP16 * 255.0 / 65535.0))
    np.testing.assert_array_equal(_read(narrow), _grey(small))


def test_float_grey_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    path = tmp_path / "float.tif"
    Image.fromarray(values, "F").save(path)
    np.testing.assert_array_equal(_read(path), _grey(values.astype(np.float64) * 255))


def test_eight_bit_modes_are_pils_own_conversion(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for mode in ("L", "P", "RGBA", "CMYK", "1"):
        image = rgb.convert(mode)
        assert np.array_equal(np.asarray(rgb_image(image)), np.asarray(image.convert("RGB"))), mode


def test_the_default_transform_scales_sixteen_bit_grey_too() -> None:
    tensor = default_transform(8)(Image.fromarray(RAMP16))
    expected = default_transform(8)(Image.fromarray(_grey(RAMP16 * 255.0 / 65535.0)))
    np.testing.assert_array_equal(tensor.numpy(), expected.numpy())
