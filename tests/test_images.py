"""Image intake: every PIL mode, EXIF, sources, and the refusals a user would hit."""
import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from sd_webui_sam.errors import ImageTooLargeError, InvalidImageError
from sd_webui_sam.images import image_content_key, load_image, load_image_rgba


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A real 4x4 PNG whose header is rewritten to claim another size (valid CRC)."""
    data = bytearray(_encode(Image.new("RGB", (4, 4))))
    data[16:20] = struct.pack(">I", width)
    data[20:24] = struct.pack(">I", height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _check_rgb(result, shape):
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.uint8
    assert result.shape == shape + (3,)
    assert result.flags.c_contiguous


# ---------------------------------------------------------------- modes

def test_rgb_passes_through_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    result = load_image(Image.fromarray(pixels))
    _check_rgb(result, (7, 5))
    np.testing.assert_array_equal(result, pixels)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)   # opaque red stays red
    rgba[0, 1] = (255, 0, 0, 0)     # fully transparent: white
    rgba[0, 2] = (0, 0, 0, 128)     # half-transparent black: mid grey
    result = load_image(Image.fromarray(rgba, "RGBA"))
    _check_rgb(result, (2, 3))
    assert tuple(result[0, 0]) == (255, 0, 0)
    assert tuple(result[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in result[0, 2])


def test_la_and_pa_are_composited_on_white():
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (0, 255))
    result = load_image(la)
    assert tuple(result[0, 0]) == (255, 255, 255)
    assert tuple(result[0, 1]) == (0, 0, 0)

    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    pa.putpixel((0, 0), (0, 255))
    pa.putpixel((1, 0), (0, 0))
    result = load_image(pa)
    assert tuple(result[0, 0]) == (0, 0, 255)
    assert tuple(result[0, 1]) == (255, 255, 255)


def test_grey_and_bilevel():
    grey = Image.new("L", (3, 2), 77)
    np.testing.assert_array_equal(load_image(grey), np.full((2, 3, 3), 77, np.uint8))
    bilevel = Image.new("1", (3, 2), 0)
    bilevel.putpixel((2, 1), 1)
    result = load_image(bilevel)
    assert tuple(result[1, 2]) == (255, 255, 255)
    assert tuple(result[0, 0]) == (0, 0, 0)


def test_palette_with_and_without_transparency():
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    palette.putpixel((1, 0), 1)
    result = load_image(palette)
    assert tuple(result[0, 0]) == (255, 0, 0) and tuple(result[0, 1]) == (0, 255, 0)

    reopened = Image.open(io.BytesIO(_encode(palette, transparency=0)))  # index 0 transparent
    assert reopened.mode == "P" and "transparency" in reopened.info
    result = load_image(reopened)
    assert tuple(result[0, 0]) == (255, 255, 255)
    assert tuple(result[0, 1]) == (0, 255, 0)
    assert load_image_rgba(reopened)[0, 0, 3] == 0


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_is_scaled_not_clipped(mode):
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    image = Image.new(mode, (3, 1))
    for x, value in enumerate(values[0]):
        image.putpixel((x, 0), int(value))
    result = load_image(image)
    np.testing.assert_array_equal(result[0, :, 0], [0, 100, 255])
    assert (result[..., 0] == result[..., 2]).all()


def test_16_bit_png_file_opened_as_mode_i():
    values = np.array([[0, 25700, 65535, 32768]], np.uint16)
    data = _encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode in ("I", "I;16")
    np.testing.assert_array_equal(load_image(data)[0, :, 1], [0, 100, 255, 128])


def test_32_bit_and_float_ranges():
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], np.int32), "I")
    np.testing.assert_array_equal(load_image(wide)[0, :, 0], [0, 128, 255])

    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    np.testing.assert_array_equal(load_image(unit)[0, :, 0], [0, 128, 255])

    other = Image.fromarray(np.array([[10.0, 20.0, 30.0]], np.float32), "F")
    np.testing.assert_array_equal(load_image(other)[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV"])
def test_other_colour_spaces_convert_like_pil(mode):
    source = Image.fromarray(np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8))
    converted = source.convert(mode) if mode != "LAB" else Image.new("LAB", (6, 4), (128, 140, 100))
    result = load_image(converted)
    _check_rgb(result, (4, 6))
    np.testing.assert_array_equal(result, np.asarray(converted.convert("RGB")))


# ---------------------------------------------------------------- EXIF

@pytest.mark.parametrize("orientation, expected_red_corner", [(1, (0, 0)), (6, (0, -1)), (3, (-1, -1)), (8, (-1, 0))])
def test_exif_orientation_is_applied(orientation, expected_red_corner):
    # Stored image: 64 wide, 32 high, red block in the top-left corner.
    pixels = np.full((32, 64, 3), 255, np.uint8)
    pixels[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    result = load_image(data)
    expected_shape = (64, 32) if orientation in (6, 8) else (32, 64)
    assert result.shape[:2] == expected_shape
    row, column = expected_red_corner
    corner = result[row, column].astype(int)
    assert corner[0] > 200 and corner[1] < 60 and corner[2] < 60


# ---------------------------------------------------------------- sources

def test_path_bytes_base64_and_data_url_agree(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(pixels))
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    text = base64.b64encode(data).decode()
    for source in (path, data, bytearray(data), memoryview(data), text,
                   "data:image/png;base64," + text, "\n" + text[:40] + "\n" + text[40:] + "\n",
                   base64.urlsafe_b64encode(data).decode().rstrip("=")):
        np.testing.assert_array_equal(load_image(source), pixels)


def test_a_plain_string_is_never_opened_as_a_file(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(_encode(Image.new("RGB", (2, 2))))
    with pytest.raises(InvalidImageError, match="pathlib.Path"):
        load_image(str(path))


def test_arrays_of_every_layout_and_dtype():
    rgb = np.random.default_rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(rgb), rgb)
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(load_image(grey), np.repeat(grey[:, :, None], 3, 2))
    np.testing.assert_array_equal(load_image(grey[:, :, None]), np.repeat(grey[:, :, None], 3, 2))
    np.testing.assert_array_equal(load_image(rgb.astype(np.uint16) * 257), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.float32) / 255.0), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.float64)), rgb)
    boolean = grey > 128
    np.testing.assert_array_equal(load_image(boolean)[..., 0], boolean.astype(np.uint8) * 255)

    rgba = np.dstack([rgb, np.zeros((4, 5), np.uint8)])
    assert (load_image(rgba) == 255).all()  # fully transparent: white
    np.testing.assert_array_equal(load_image_rgba(rgba), rgba)


def test_result_is_a_copy_of_the_callers_array():
    rgb = np.zeros((3, 3, 3), np.uint8)
    result = load_image(rgb)
    result[0, 0] = 9
    assert rgb[0, 0, 0] == 0


def test_rgba_loader_keeps_alpha_and_makes_opaque_images_opaque():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = [[0, 100], [200, 255]]
    rgba[..., 0] = 50
    result = load_image_rgba(_encode(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(result, rgba)
    opaque = load_image_rgba(Image.new("RGB", (2, 2), (1, 2, 3)))
    assert opaque.shape == (2, 2, 4) and (opaque[..., 3] == 255).all()


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3))))
def test_png_round_trip_is_lossless(pixels):
    text = base64.b64encode(_encode(Image.fromarray(pixels))).decode()
    np.testing.assert_array_equal(load_image(text), pixels)


# ---------------------------------------------------------------- refusals

def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # The header claims 9000x8000 (72 MP, over the 64 MP default, under PIL's own limit);
    # the data is 4x4, so only a header check can say "too large" instead of "truncated".
    with pytest.raises(ImageTooLargeError, match="9000x8000"):
        load_image(_png_claiming_size(9000, 8000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("scale", [1.2, 4.0], ids=["warning-range", "bomb-error"])
def test_a_huge_picture_names_one_limit_in_our_words(scale):
    # issue #19 item 9: the 413 mixed our limit with PIL's and leaked PIL's own text; between
    # PIL's limit and twice it PIL only warns and would decode, past it PIL raises in open()
    side = int((Image.MAX_IMAGE_PIXELS * scale) ** 0.5)
    with pytest.raises(ImageTooLargeError) as raised:
        load_image(_png_claiming_size(side, side), max_pixels=10**12)
    message = str(raised.value)
    assert f"limit of {Image.MAX_IMAGE_PIXELS:,}" in message and f"{10**12:,}" not in message
    assert "bomb" not in message.lower() and "DOS" not in message


def test_pixel_limit_applies_to_every_source():
    image = Image.new("RGB", (100, 60))
    for source in (image, _encode(image), np.zeros((60, 100, 3), np.uint8)):
        with pytest.raises(ImageTooLargeError, match="6,000 pixels"):
            load_image(source, max_pixels=5000)
    assert load_image(image, max_pixels=6000).shape == (60, 100, 3)


def test_zero_size_images_are_refused():
    for source in (np.zeros((0, 5, 3), np.uint8), Image.new("RGB", (0, 5)), np.zeros((4, 0), np.uint8)):
        with pytest.raises(InvalidImageError, match="empty"):
            load_image(source)
    with pytest.raises(InvalidImageError):
        load_image(_png_claiming_size(0, 5))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(fmt):
    pixels = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(pixels), fmt)
    with pytest.raises(InvalidImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


def test_non_images_and_bad_strings_are_refused():
    cases = [b"hello, this is not a picture", b"", "", "   ", "!!!not base64!!!",
             "data:image/png;base64,@@@@", base64.b64encode(b"plain text").decode(),
             b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"]
    for source in cases:
        with pytest.raises(InvalidImageError):
            load_image(source)
    with pytest.raises(InvalidImageError, match="not found"):
        load_image(Path("/nonexistent/picture.png"))
    for bad in (12345, np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.int32) - 5,
                np.full((2, 2, 3), np.nan), np.full((2, 2, 3), 300.0)):
        with pytest.raises(InvalidImageError):
            load_image(bad)


# ---------------------------------------------------------------- content key

def test_content_key_tracks_pixels_shape_and_dtype():
    image = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert image_content_key(image) == image_content_key(image.copy())
    changed = image.copy()
    changed[3, 3, 1] ^= 1
    assert image_content_key(changed) != image_content_key(image)
    assert image_content_key(image.reshape(4, 16, 3)) != image_content_key(image)
    assert image_content_key(image.view(np.int8)) != image_content_key(image)
    assert image_content_key(np.asfortranarray(image)) == image_content_key(image)
