"""Image loading (every Pillow mode into RGB, limits, errors) and preprocessing into pixel tensors."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from minillava.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image, load_images
from minillava.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform

BACKGROUND = (10, 20, 30)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a few bytes of garbage pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\x00" * 16) + chunk(b"IEND", b"")


# -- modes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pillow_mode_becomes_rgb(mode):
    out = load_image(Image.new(mode, (5, 3)))
    assert out.mode == "RGB" and out.size == (5, 3)


def test_rgba_transparency_is_composited_onto_the_background():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[:, 0] = (255, 0, 0, 255)  # opaque red
    rgba[:, 1] = (0, 255, 0, 0)  # fully transparent green
    rgba[:, 2] = (0, 0, 250, 128)  # half transparent blue
    out = pixels(load_image(Image.fromarray(rgba), background=BACKGROUND))
    assert (out[:, 0] == (255, 0, 0)).all()
    assert (out[:, 1] == BACKGROUND).all()
    np.testing.assert_allclose(out[0, 2], (5, 10, 140), atol=1)


def test_la_transparency_is_composited():
    la = Image.merge("LA", (Image.new("L", (2, 1), 200), Image.new("L", (2, 1), 0)))
    assert (pixels(load_image(la, background=BACKGROUND)) == BACKGROUND).all()


def test_palette_transparency_is_composited():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.putpixel((0, 0), 1)
    image.info["transparency"] = 0  # palette index 0 is transparent
    decoded = Image.open(io.BytesIO(encode(image)))  # through a real PNG tRNS chunk
    for source in (image, decoded):
        out = pixels(load_image(source, background=BACKGROUND))
        assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == BACKGROUND


def test_gray_and_bilevel_become_gray_rgb():
    assert tuple(pixels(load_image(Image.new("L", (1, 1), 77)))[0, 0]) == (77, 77, 77)
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert pixels(load_image(bilevel))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_cmyk_becomes_rgb():
    assert tuple(pixels(load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 0))))[0, 0]) == (255, 255, 255)
    assert tuple(pixels(load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 255))))[0, 0]) == (0, 0, 0)
    assert tuple(pixels(load_image(Image.new("CMYK", (1, 1), (0, 255, 255, 0))))[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_is_scaled_by_257(mode):
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    image = Image.frombytes(mode, (3, 1), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert pixels(load_image(image))[0, :, 0].tolist() == [0, 100, 255]


def test_16_bit_png_file_is_scaled_by_257():
    image = Image.fromarray(np.array([[0, 257 * 42, 65535]], np.uint16))
    assert pixels(load_image(encode(image)))[0, :, 0].tolist() == [0, 42, 255]


def test_32_bit_integers_keep_8_bit_values_scale_16_bit_ones_and_stretch_the_rest():
    def gray(values: list[int]) -> list[int]:
        return pixels(load_image(Image.fromarray(np.array([values], np.int32))))[0, :, 0].tolist()

    assert gray([0, 100, 255]) == [0, 100, 255]
    assert gray([0, 257 * 100, 65535]) == [0, 100, 255]
    assert gray([-1000, 0, 1000]) == [0, 128, 255]


def test_floats_clip_8_bit_values_scale_unit_ones_and_stretch_the_rest():
    def gray(values: list[float]) -> list[int]:
        return pixels(load_image(Image.fromarray(np.array([values], np.float32))))[0, :, 0].tolist()

    assert gray([0.0, 100.4, 255.0]) == [0, 100, 255]
    assert gray([0.0, 0.5, 1.0]) == [0, 128, 255]
    assert gray([-2.0, 0.0, 2.0]) == [0, 128, 255]
    assert gray([0.0, float("nan"), 300.0]) == [0, 0, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, quality=95, exif=exif)
    out = load_image(path)
    assert out.size == (20, 40)
    top = pixels(out)[2, 10]
    assert top[2] > 200 and top[0] < 50  # the left edge is now on top


# -- sources ----------------------------------------------------------------------------------------------
def test_bytes_path_str_and_pil_sources_give_the_same_pixels(tmp_path):
    image = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    path = tmp_path / "a.png"
    image.save(path)
    expected = np.asarray(image)
    for source in (path, str(path), path.read_bytes(), image, Image.open(path)):
        assert (np.asarray(load_image(source)) == expected).all()
    assert [im.size for im in load_images([path, str(path)])] == [(6, 4), (6, 4)]


def test_a_pil_image_passed_in_is_not_modified():
    image = Image.new("RGBA", (3, 3), (1, 2, 3, 0))
    before = image.tobytes()
    out = load_image(image, background=BACKGROUND)
    assert out is not image and image.mode == "RGBA" and image.tobytes() == before
    rgb = Image.new("RGB", (3, 3), (1, 2, 3))
    assert load_image(rgb) is not rgb


def test_min_side_decodes_large_jpegs_at_a_reduced_scale():
    data = encode(Image.new("RGB", (1024, 768), (200, 100, 50)), "JPEG")
    assert load_image(data).size == (1024, 768)
    assert load_image(data, min_side=224).size == (512, 384)  # 1/4 would make the height 192 < 224
    assert load_image(encode(Image.new("RGB", (1024, 768)), "PNG"), min_side=224).size == (1024, 768)


# -- limits and errors ------------------------------------------------------------------------------------
def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # The pixel data is garbage: decoding would fail with another message.
    message = r"<bytes>: 5000 x 4000 = 20000000 pixels is over the limit of 1000000"
    with pytest.raises(ImageError, match=message):
        load_image(png_header(5000, 4000), max_pixels=1_000_000)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(png_header(50, 40), max_pixels=1_000_000)


def test_pixel_limit_on_real_images_and_none_lifts_it(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 80)).save(path)
    with pytest.raises(ImageError, match=rf"{path}: 100 x 80 = 8000 pixels is over the limit of 5000"):
        load_image(path, max_pixels=5000)
    with pytest.raises(ImageError, match="over the limit of 5000"):
        load_image(Image.open(path), max_pixels=5000)
    assert load_image(path, max_pixels=None).size == (100, 80)


def test_headers_past_pillows_own_bomb_limit_are_refused():
    with pytest.raises(ImageError, match=f"over the limit of {DEFAULT_MAX_PIXELS}"):
        load_image(png_header(20_000, 20_000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_headers_in_pillows_warning_range_are_refused():
    message = f"10000 x 10000 = 100000000 pixels is over the limit of {DEFAULT_MAX_PIXELS}"
    with pytest.raises(ImageError, match=message):
        load_image(png_header(10_000, 10_000))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillows_bomb_warning_raised_as_an_error_becomes_an_image_error():
    with pytest.raises(ImageError, match=f"over the limit of {DEFAULT_MAX_PIXELS}"):
        load_image(png_header(10_000, 10_000))


def test_missing_files_directories_and_junk_are_image_errors(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match=f"{missing}: no such file"):
        load_image(missing)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="<bytes>: not an image"):
        load_image(b"definitely not an image")
    with pytest.raises(TypeError):
        load_image(42)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_image_errors(fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(ImageError, match="<bytes>: corrupt or truncated"):
        load_image(data[: len(data) // 2])


# -- transforms -------------------------------------------------------------------------------------------
CLIP = ImageTransform(size=(32, 32), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)


def normalised(colour: tuple[int, int, int], transform: ImageTransform = CLIP) -> torch.Tensor:
    value = torch.tensor(colour, dtype=torch.float32) * transform.rescale_factor
    return (value - torch.tensor(transform.mean)) / torch.tensor(transform.std)


def test_batch_shape_dtype_and_layout():
    transform = ImageTransform(size=(24, 40), mean=(0.5,) * 3, std=(0.5,) * 3)
    images = [Image.new("RGB", size) for size in ((100, 50), (13, 77), (40, 24))]
    for mode in ("pad", "crop", "squash"):
        transform.resize_mode = mode
        batch = transform(images)
        assert batch.shape == (3, 3, 24, 40) and batch.dtype == torch.float32 and batch.is_contiguous()
        assert [transform.preprocess(im).shape for im in images] == [(24, 40, 3)] * 3
    assert transform([]).shape == (0, 3, 24, 40)


def test_normalisation_is_exact_on_a_constant_image():
    colour = (10, 200, 30)
    batch = CLIP([Image.new("RGB", (70, 70), colour)])
    expected = normalised(colour).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(batch[0], expected, rtol=0, atol=1e-6)


def test_background_is_the_mean_colour():
    assert CLIP.background == (123, 117, 104)
    assert ImageTransform(size=(8, 8), mean=(0.5,) * 3, std=(1.0,) * 3).background == (128, 128, 128)


def test_pad_keeps_the_aspect_ratio_with_mean_coloured_bars():
    batch = CLIP([Image.new("RGB", (200, 100), (255, 0, 0))])[0]  # wide: bars above and below
    bar = normalised(CLIP.background).view(3, 1)
    for row in (0, 7, 24, 31):
        torch.testing.assert_close(batch[:, row], bar.expand(3, 32), rtol=0, atol=1e-6)
    torch.testing.assert_close(batch[:, 16, 16], normalised((255, 0, 0)), rtol=0, atol=1e-6)
    tall = CLIP([Image.new("RGB", (100, 200), (255, 0, 0))])[0]
    torch.testing.assert_close(tall[:, :, 0], bar.expand(3, 32), rtol=0, atol=1e-6)


def test_pad_is_close_to_llava_pad_then_resize():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((400, 300), 3)
    transform = ImageTransform(size=(112, 112), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, reducing_gap=None)
    square = Image.new("RGB", (400, 400), transform.background)
    square.paste(image, (0, 50))
    reference = np.asarray(square.resize((112, 112), 3)).astype(int)
    difference = np.abs(transform.preprocess(image).astype(int) - reference)
    assert difference.mean() < 0.5
    away_from_borders = np.r_[0:12, 16:96, 100:112]
    assert difference[away_from_borders].max() <= 2


def test_crop_takes_the_centre_and_squash_keeps_everything():
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (50, 0, 250, 100))  # blue borders left and right of a red centre
    for mode, target in (("crop", (64, 64)), ("crop", (40, 64)), ("squash", (64, 48))):
        out = ImageTransform(size=target, mean=(0,) * 3, std=(1,) * 3, resize_mode=mode).preprocess(image)
        assert out.shape == (*target, 3)
        left_edge = out[:, 0].astype(int)
        if mode == "crop":
            assert (left_edge[:, 0] > 200).all() and (left_edge[:, 2] < 60).all()
        else:
            assert (left_edge[:, 2] > 200).all()


def test_crop_shortest_edge_resizes_before_cropping():
    image = Image.new("RGB", (256, 256), (0, 0, 255))
    image.paste((255, 0, 0), (16, 16, 240, 240))  # a 16 pixel blue frame around red
    plain = {"size": (224, 224), "mean": (0,) * 3, "std": (1,) * 3, "resize_mode": "crop"}
    dinov2 = ImageTransform(**plain, crop_shortest_edge=256)
    assert (dinov2.preprocess(image) == (255, 0, 0)).all()
    fitted = ImageTransform(**plain)
    assert (fitted.preprocess(image)[0, 0] == (0, 0, 255)).all()


def test_transparent_input_is_filled_with_the_mean_colour():
    batch = CLIP([Image.new("RGBA", (10, 10), (255, 255, 255, 0))])
    assert batch.abs().max() < 0.02


def test_bad_fields_are_rejected():
    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransform(size=(8, 8), mean=(0,) * 3, std=(1,) * 3, resize_mode="stretch")
    with pytest.raises(ValueError, match="zero"):
        ImageTransform(size=(8, 8), mean=(0,) * 3, std=(1, 0, 1))


def test_dict_round_trip_through_json():
    transform = ImageTransform(size=(24, 40), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), resize_mode="crop",
                               resample=2, rescale_factor=0.5, crop_shortest_edge=30, reducing_gap=None)
    assert ImageTransform.from_dict(json.loads(json.dumps(transform.to_dict()))) == transform
    with pytest.raises(ValueError, match="no field"):
        ImageTransform.from_dict({**transform.to_dict(), "sizes": [1, 1]})


# -- Hugging Face preprocessor configs --------------------------------------------------------------------
LLAVA_CLIP_336 = {
    "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True, "do_normalize": True, "do_resize": True, "image_mean": list(OPENAI_CLIP_MEAN),
    "image_std": list(OPENAI_CLIP_STD), "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}
SIGLIP_384 = {
    "image_processor_type": "SiglipImageProcessor", "do_normalize": True, "do_rescale": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
    "size": {"height": 384, "width": 384},
}
DINOV2 = {
    "image_processor_type": "BitImageProcessor", "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    "resample": 3, "size": {"shortest_edge": 256},
}


def test_from_clip_preprocessor():
    transform = ImageTransform.from_hf_preprocessor(LLAVA_CLIP_336)
    assert transform.size == (336, 336) and transform.resize_mode == "crop"
    assert transform.mean == OPENAI_CLIP_MEAN and transform.std == OPENAI_CLIP_STD
    assert transform.resample == 3 and transform.rescale_factor == pytest.approx(1 / 255)
    padded = ImageTransform.from_hf_preprocessor(LLAVA_CLIP_336, resize_mode="pad")
    assert padded.resize_mode == "pad" and padded.crop_shortest_edge is None


def test_from_siglip_and_dinov2_preprocessors():
    siglip = ImageTransform.from_hf_preprocessor(SIGLIP_384)
    assert siglip.size == (384, 384) and siglip.resize_mode == "squash" and siglip.mean == (0.5, 0.5, 0.5)
    dinov2 = ImageTransform.from_hf_preprocessor(DINOV2)
    assert dinov2.size == (224, 224) and dinov2.resize_mode == "crop" and dinov2.crop_shortest_edge == 256
    assert dinov2.mean == (0.485, 0.456, 0.406)


def test_missing_fields_fall_back_to_the_processor_defaults():
    clip = ImageTransform.from_hf_preprocessor({"image_processor_type": "CLIPImageProcessor"})
    assert clip.size == (224, 224) and clip.resize_mode == "crop" and clip.mean == OPENAI_CLIP_MEAN
    vit = ImageTransform.from_hf_preprocessor({"image_processor_type": "ViTImageProcessor"})
    assert vit.resample == 2 and vit.resize_mode == "squash" and vit.std == (0.5, 0.5, 0.5)
    llava = {"image_processor_type": "LlavaImageProcessor", "do_pad": True}
    assert ImageTransform.from_hf_preprocessor(llava).resize_mode == "pad"
    with pytest.raises(ValueError, match="lacks"):
        ImageTransform.from_hf_preprocessor({"image_processor_type": "SomethingElse"})


def test_old_integer_sizes():
    old = {"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224,
           "do_center_crop": True}
    transform = ImageTransform.from_hf_preprocessor(old)
    assert transform.size == (224, 224) and transform.crop_shortest_edge == 224
    no_crop = {**old, "size": 160, "do_center_crop": False}
    assert ImageTransform.from_hf_preprocessor(no_crop).size == (160, 160)


def test_from_a_file_or_its_folder_and_unreadable_files(tmp_path: Path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(SIGLIP_384))
    assert ImageTransform.from_hf_preprocessor(path).size == (384, 384)
    assert ImageTransform.from_hf_preprocessor(str(tmp_path)).size == (384, 384)
    with pytest.raises(ValueError, match="missing.json"):
        ImageTransform.from_hf_preprocessor(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: cannot read"):
        ImageTransform.from_hf_preprocessor(broken)
