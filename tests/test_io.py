"""integrad.app.io: image levels by bit depth, CSV byte-order marks, unreadable images, non-finite inputs, and data sets
that cannot be read named by their argument."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from integrad.app.io import InputError, load_image, load_inputs, open_data

# --------------------------------------------------------------------------- image levels


def _ramp16() -> np.ndarray:
    return np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0 .. 63000 of 65535


def test_16_bit_grey_png_keeps_its_levels(tmp_path):
    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x = load_image(tmp_path / "g16.png")
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0, 0].numpy(), ramp / 65535.0, rtol=0, atol=1e-6)


def test_16_bit_big_endian_tiff_keeps_its_levels(tmp_path):
    ramp = _ramp16()
    Image.frombytes("I;16B", (8, 8), ramp.astype(">u2").tobytes()).save(tmp_path / "b16.tif")
    x = load_image(tmp_path / "b16.tif")
    np.testing.assert_allclose(x[0, 0].numpy(), ramp / 65535.0, rtol=0, atol=1e-6)


def test_float_image_is_kept_as_stored(tmp_path):
    values = np.linspace(-0.5, 2.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    x = load_image(tmp_path / "f.tif")
    assert x.shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(x[0, 0].numpy(), values)


def test_32_bit_integer_image_is_scaled_by_its_bit_depth(tmp_path):
    values = np.arange(64, dtype=np.int32).reshape(8, 8) * 30_000_000  # beyond 16 bits
    Image.fromarray(values).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    x = load_image(tmp_path / "i32.tif")
    np.testing.assert_allclose(x[0, 0].numpy(), values / (2**31 - 1), rtol=1e-6, atol=1e-7)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_8_bit_images_are_divided_by_255(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_allclose(load_image(tmp_path / "g.png")[0, 0].numpy(), grey / 255.0, atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "c.png")[0].numpy(), rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_image_folder_keeps_16_bit_levels_also_beside_colour_images(tmp_path):
    ramp = _ramp16()
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(ramp).save(grey / "a.png")
    x = open_data(str(grey)).batch([0])
    assert x.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(x[0, 0].numpy(), ramp / 65535.0, atol=1e-6)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(ramp).save(mixed / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(mixed / "b.png")
    x = open_data(str(mixed)).batch([0, 1])
    assert x.shape == (2, 3, 8, 8)
    for c in range(3):  # the grey image is repeated in the three channels, its levels kept
        np.testing.assert_allclose(x[0, c].numpy(), ramp / 65535.0, atol=1e-6)


# --------------------------------------------------------------------------- unreadable images


def _bomb_png(tmp_path):
    """A valid 1x1 PNG whose header claims 20000 x 20000 pixels: Pillow refuses it as a decompression bomb."""
    small = tmp_path / "one.png"
    Image.new("L", (1, 1)).save(small)
    raw = bytearray(small.read_bytes())
    i = raw.index(b"IHDR")
    raw[i + 4 : i + 12] = struct.pack(">II", 20000, 20000)
    raw[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(raw[i : i + 17])))
    big = tmp_path / "big.png"
    big.write_bytes(bytes(raw))
    return big


def test_image_pillow_refuses_is_an_input_error(tmp_path):
    big = _bomb_png(tmp_path)
    with pytest.raises(InputError, match="cannot read image") as info:
        load_image(big)
    assert info.value.parameter == "inputs" and "\n" not in str(info.value)
    folder = tmp_path / "folder"
    folder.mkdir()
    big.rename(folder / "big.png")
    with pytest.raises(InputError, match="cannot read image") as info:
        open_data(str(folder))
    assert info.value.parameter == "data"


# --------------------------------------------------------------------------- CSV


def _bom_csv(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return path


def test_csv_with_a_byte_order_mark(tmp_path):
    loaded = load_inputs(_bom_csv(tmp_path, "plain.csv", "1,2,3\n4,5,6\n"))
    assert loaded.feature_names is None
    torch.testing.assert_close(loaded.inputs, torch.tensor([[1.0, 2, 3], [4, 5, 6]]))

    loaded = load_inputs(_bom_csv(tmp_path, "label.csv", "label,a,b\n1,2,3\n0,5,6\n"))
    torch.testing.assert_close(loaded.labels, torch.tensor([1, 0]))
    assert loaded.feature_names == ["a", "b"]
    torch.testing.assert_close(loaded.inputs, torch.tensor([[2.0, 3], [5, 6]]))


# --------------------------------------------------------------------------- non-finite inputs


def test_non_finite_inputs_are_refused_naming_the_examples(tmp_path):
    (tmp_path / "nan.csv").write_text("a,b,c\n1,2,3\nnan,1,2\n")
    with pytest.raises(InputError, match=r"example 1 holds NaN or infinite values") as info:
        load_inputs(tmp_path / "nan.csv")
    assert info.value.parameter == "inputs"

    images = np.random.default_rng(0).random((3, 1, 4, 4)).astype(np.float32)
    images[0, 0, 1, 1] = np.inf
    images[2, 0, 0, 0] = -np.inf
    np.save(tmp_path / "img.npy", images)
    with pytest.raises(InputError, match=r"examples 0, 2 hold NaN or infinite values"):
        load_inputs(tmp_path / "img.npy")

    values = np.full((4, 4), np.nan, dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match="NaN or infinite"):
        load_inputs(tmp_path / "nan.tif")


def test_non_finite_data_is_refused(tmp_path):
    X = np.ones((4, 3), np.float32)
    X[3, 1] = np.nan
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros(4, np.int64))
    with pytest.raises(InputError, match="example 3 holds NaN") as info:
        open_data(str(tmp_path / "d.npz"))
    assert info.value.parameter == "data"

    source = open_data("cli_factories:NanItem")
    assert source.batch([0, 1]).shape == (2, 6)
    with pytest.raises(InputError, match="item 4 holds NaN"):
        source.batch([3, 4])

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(folder / "a.tif")
    Image.fromarray(np.full((4, 4), np.inf, np.float32), mode="F").save(folder / "b.tif")
    source = open_data(str(folder))
    assert source.batch([0]).shape == (1, 1, 4, 4)
    with pytest.raises(InputError, match="b.tif holds NaN"):
        source.batch([1])


# --------------------------------------------------------------------------- data sets


def test_open_data_errors_name_the_argument(tmp_path):
    (tmp_path / "two.npz").write_bytes(b"")
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(InputError, match="data: .*name the inputs 'X'"):
        open_data(str(tmp_path / "two.npz"))
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")
    with pytest.raises(InputError, match="data: .*line 2"):
        open_data(str(tmp_path / "bad.csv"))
