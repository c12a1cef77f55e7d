import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffprior.io import (center_square, fill_holes, fit_note, image_grid, list_images, load_image, load_mask, masked_center_square, photo_mask,
                          save_image, tensor_to_pil)


def test_round_trip_is_exact_for_8_bit_images(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 12, 10) and float(x.min()) >= -1 and float(x.max()) <= 1
    save_image(x, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)


def test_save_image_writes_grey_and_refuses_what_is_no_image(tmp_path):
    grey = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)  # e.g. a colorize measurement
    save_image(grey, tmp_path / "grey.png")
    im = Image.open(tmp_path / "grey.png")
    assert im.mode == "L" and np.array_equal(np.asarray(im), np.asarray(tensor_to_pil(grey[0])))
    assert np.asarray(im)[0, 0] == 0 and np.asarray(im)[3, 3] == 255
    for bad, error, message in [
        (torch.zeros(4, 4), ValueError, r"with C = 3 \(RGB\) or 1 \(grey\), got shape \(4, 4\)"),
        (torch.zeros(4, 4, 3), ValueError, r"got shape \(4, 4, 3\)"),  # channels last
        (torch.zeros(1, 4, 4, 4), ValueError, r"got shape \(4, 4, 4\)"),  # RGBA is not an image in [-1, 1]
        (torch.full((3, 4, 4), float("nan")), ValueError, "NaN"),
        (torch.full((3, 4, 4), 255, dtype=torch.uint8), TypeError, "floating-point"),  # not [-1, 1]
    ]:
        with pytest.raises(error, match=message):
            save_image(bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    with pytest.warns(UserWarning, match=r"the image reaches 255, and is clipped to \[-1, 1\]: the library's"):
        save_image(torch.full((3, 4, 4), 255.0), tmp_path / "white.png")  # [0, 255] pixels: all white
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_image(torch.full((3, 4, 4), 1.2), tmp_path / "overshoot.png")  # a restoration's overshoot: clipped


def test_an_icon_keeps_the_image_at_its_own_size(tmp_path):
    """Pillow's icons hold its standard sizes (16 px up) that fit the image: an 8x8 image wrote an empty file."""
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for side in (8, 64):
        image = torch.nn.functional.interpolate(x, size=(side, side))
        save_image(image, tmp_path / f"icon{side}.ico")
        with Image.open(tmp_path / f"icon{side}.ico") as im:
            assert im.size == (side, side)
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(tensor_to_pil(image[0])))


def test_rgba_is_composited_onto_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[:2, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "rgba.png")
    x = load_image(tmp_path / "rgba.png")
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(x[0, :, 3, 0], torch.tensor([1.0, 1.0, 1.0]))
    assert torch.allclose(load_image(tmp_path / "rgba.png", alpha="black")[0, :, 3, 0], torch.tensor([-1.0, -1.0, -1.0]))


def test_greyscale_and_16_bit_become_rgb(tmp_path):
    Image.fromarray(np.full((5, 5), 128, dtype=np.uint8), "L").save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (1, 3, 5, 5) and torch.allclose(x[0, 0], x[0, 2])
    Image.fromarray(np.full((5, 5), 65535, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert torch.allclose(load_image(tmp_path / "g16.png"), torch.ones(1, 3, 5, 5))
    Image.fromarray(np.full((5, 5), 200, dtype=np.uint16)).save(tmp_path / "dark16.png")  # 16-bit, not 8
    assert torch.allclose(load_image(tmp_path / "dark16.png"), -torch.ones(1, 3, 5, 5), atol=0.01)
    Image.fromarray(np.full((5, 5), 0.5, dtype=np.float32)).save(tmp_path / "float.tiff")  # floats in [0, 1]
    assert torch.allclose(load_image(tmp_path / "float.tiff"), torch.full((1, 3, 5, 5), 128 / 127.5 - 1), atol=1e-6)
    over = np.full((10, 10), 0.5, dtype=np.float32)
    over[0, 0] = 1.001  # one value just over 1 (processing overshoot): still a [0, 1] image, not a black one
    Image.fromarray(over).save(tmp_path / "over.tiff")
    assert torch.allclose(load_image(tmp_path / "over.tiff")[..., 1:, :], torch.tensor(128 / 127.5 - 1), atol=1e-6)


def test_sizes_and_grids_that_make_no_image_are_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    for size in (0, -1, 64.5):
        with pytest.raises(ValueError, match=f"size={size}: the side of the square image"):
            load_image(tmp_path / "a.png", size)
    for images, nrow in ((torch.zeros(0, 3, 4, 4), 8), (torch.zeros(2, 3, 4, 4), 0)):
        with pytest.raises(ValueError, match="non-empty batch .* nrow >= 1"):
            image_grid(images, nrow)


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stores its pixels sideways and an orientation tag; the image is what viewers show."""
    arr = np.zeros((40, 60, 3), dtype=np.uint8)  # stored 60 wide, 40 tall, bright top-left block
    arr[:20, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    x = load_image(tmp_path / "phone.jpg")
    assert x.shape == (1, 3, 60, 40)  # upright: 40 wide, 60 tall
    assert float(x[0, :, :20, 20:].mean()) > 0.9 and float(x[0, :, :20, :20].mean()) < -0.9  # block top-right


def test_odd_sizes_are_centre_cropped_and_resized(tmp_path):
    arr = np.zeros((109, 89, 3), dtype=np.uint8)  # a CelebA-shaped image with a bright central square
    arr[10:99, :] = 255
    Image.fromarray(arr).save(tmp_path / "c.jpg", quality=95)
    x = load_image(tmp_path / "c.jpg", 64)
    assert x.shape == (1, 3, 64, 64)
    assert float(x.mean()) > 0.95  # the crop is the central 89x89, all bright


def test_the_note_says_when_the_crop_drops_part_of_a_photo_or_upscales_it():
    assert fit_note("a.png", (64, 64), 64) is None and fit_note("a.png", (300, 300), 64) is None
    assert fit_note("a.png", (89, 109), 64) == "a.png is 89x109: its central 89x89 square is used"
    small = fit_note("a.png", (40, 30), 64)
    assert small.startswith("a.png is 40x30: its central 30x30 square is used, upscaled to 64x64")
    assert fit_note("a.png", (16, 16), 64) == ("a.png is 16x16: it is used, upscaled to 64x64, so the result has "
                                               "no more detail than its 16x16 pixels")


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "corrupt.png")


def test_grid_and_listing(tmp_path):
    grid = image_grid(torch.zeros(5, 3, 4, 4), nrow=2, padding=1)
    assert grid.shape == (3, 3 * 5 + 1, 2 * 5 + 1)
    save_image(grid, tmp_path / "grid.png")
    (tmp_path / "notes.txt").write_text("x")
    save_image(grid, tmp_path / "photo.JFIF")  # a JPEG by another of its names
    with Image.open(tmp_path / "photo.JFIF") as im:
        assert im.format == "JPEG" and [layer[1:3] for layer in im.layer] == [(1, 1)] * 3  # no subsampling
    assert list_images(tmp_path) == [tmp_path / "grid.png", tmp_path / "photo.JFIF"]
    assert tensor_to_pil(torch.zeros(3, 2, 2)).size == (2, 2)


def damaged_photo(hole_colour=None):
    """A 150x120 photo (a smooth gradient) whose pixels in rows 40-59, columns 50-79 hold `hole_colour` (None:
    undamaged), and its mask (True = observed)."""
    yy, xx = np.mgrid[0:120, 0:150]
    arr = np.stack([xx * 1.5, yy * 2.0, np.full_like(xx, 100.0)], -1).astype(np.uint8)
    known = np.ones((120, 150), dtype=bool)
    known[40:60, 50:80] = False
    if hole_colour is not None:
        arr[~known] = hole_colour
    return Image.fromarray(arr), known


def test_what_the_holes_of_a_damaged_photo_hold_does_not_reach_the_observed_pixels():
    (green, known), (black, _), (undamaged, _) = damaged_photo((0, 255, 0)), damaged_photo((0, 0, 0)), damaged_photo()
    a, b = (np.asarray(masked_center_square(photo, known, 64), dtype=float) for photo in (green, black))
    assert np.array_equal(a, b)  # what the holes hold makes no difference at all
    observed = np.ones((64, 64), dtype=bool)
    observed[21:32, 19:35] = False  # the hole in the central 120x120 square, at 64/120 of its size
    truth = np.asarray(center_square(undamaged, 64), dtype=float)
    assert np.abs(a - truth)[observed].max() <= 1  # the observed pixels as if there had been no damage
    plain = np.asarray(center_square(green, 64), dtype=float)
    assert np.abs(plain - truth)[observed].max() > 20  # a plain resize smears the green into them


def test_the_holes_are_filled_at_the_photos_size_and_nothing_else_changes():
    photo, known = damaged_photo((0, 255, 0))
    restored = torch.full((1, 3, 64, 64), -1.0)  # a black restoration
    filled = np.asarray(fill_holes(photo, restored, known))
    assert filled.shape == (120, 150, 3)
    assert np.array_equal(filled[known], np.asarray(photo)[known])  # every observed pixel as it was
    assert filled[~known].max() == 0  # every hole pixel from the restoration
    outside = known.copy()
    outside[5, 3] = False  # left of the central 120x120 square (columns 15-134): the model never sees it
    with pytest.raises(ValueError, match="1 missing pixels outside the photo's central 120x120 square"):
        fill_holes(photo, restored, outside)


def test_a_mask_with_nothing_missing_or_with_meaningful_transparency_is_refused(tmp_path):
    """An all-white mask leaves nothing to inpaint; transparency that decides which pixels are known could mean
    either (an erased hole, or the unpainted part of a layer): both are errors, not silent guesses."""
    Image.new("L", (64, 64), 255).save(tmp_path / "white.png")
    with pytest.raises(ValueError, match="marks no pixel missing"):
        load_mask(tmp_path / "white.png", (64, 64))
    photo_mask_file = np.full((120, 150), 255, dtype=np.uint8)
    photo_mask_file[:, :10] = 0  # a hole outside the central square only
    Image.fromarray(photo_mask_file).save(tmp_path / "outside.png")
    with pytest.raises(ValueError, match="no pixel missing in the square the model sees"):
        load_mask(tmp_path / "outside.png", (64, 64), (150, 120))
    erased = np.zeros((64, 64, 4), dtype=np.uint8)
    erased[...] = 255
    erased[20:40, 20:40, 3] = 0  # opaque white with a transparent hole
    Image.fromarray(erased).save(tmp_path / "erased.png")
    painted = np.zeros((64, 64, 4), dtype=np.uint8)
    painted[20:40, 20:40] = (0, 0, 0, 255)  # black strokes on a transparent layer
    Image.fromarray(painted).save(tmp_path / "painted.png")
    for name in ("erased.png", "painted.png"):
        with pytest.raises(ValueError, match="transparent pixels, which could mean known or missing"):
            load_mask(tmp_path / name, (64, 64))
        with pytest.raises(ValueError, match="transparent pixels"):
            photo_mask(tmp_path / name, (64, 64), 64)
    opaque = np.full((64, 64, 4), 255, dtype=np.uint8)
    opaque[20:40, 20:40, :3] = 0  # an RGBA file without transparency reads as its colours
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    known = load_mask(tmp_path / "opaque.png", (64, 64))
    assert known[20:40, 20:40].sum() == 0 and known.sum() == 64 * 64 - 400


def test_a_missing_mask_or_one_of_zeros_and_ones_is_refused_with_what_to_do(tmp_path):
    """numpy's 0/1 mask saved as it is reads as all black (missing): the error says so."""
    ones = np.ones((64, 64), dtype=np.uint8)
    ones[20:40, 20:40] = 0
    Image.fromarray(ones).save(tmp_path / "ones.png")
    with pytest.raises(ValueError, match="every pixel missing.*only 0 and 1.*Save known pixels as 255"):
        load_mask(tmp_path / "ones.png", (64, 64))
    with pytest.raises(FileNotFoundError, match="no mask file at"):  # was "no image file at"
        load_mask(tmp_path / "missing.png", (64, 64))
    Image.new("L", (64, 64), 0).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match=r"nothing of the photo\.$"):  # all black: no hint of 0/1 values
        load_mask(tmp_path / "black.png", (64, 64))


def test_a_mask_of_the_models_size_covers_the_photos_central_square(tmp_path):
    mask = np.full((64, 64), 255, dtype=np.uint8)
    mask[:32] = 0  # the top half missing
    Image.fromarray(mask).save(tmp_path / "m.png")
    known = photo_mask(tmp_path / "m.png", (150, 120), 64)
    assert known.shape == (120, 150) and known[:, :15].all() and known[:, 135:].all()  # outside the square
    assert not known[:60, 15:135].any() and known[60:, 15:135].all()
    Image.new("L", (100, 100), 255).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="does not fit"):
        photo_mask(tmp_path / "odd.png", (150, 120), 64)


def test_a_photo_read_for_a_grey_prior_is_its_luma():
    from diffprior.io import is_grey, pil_to_tensor
    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8))
    grey = pil_to_tensor(rgb, channels=1)
    assert grey.shape == (1, 1, 2, 2)
    luma = np.array(rgb.convert("L"), dtype=np.float32) / 127.5 - 1  # ITU-R 601: 0.299 R + 0.587 G + 0.114 B
    assert torch.allclose(grey[0, 0], torch.from_numpy(luma)) and abs(float(grey[0, 0, 0, 0]) - (76 / 127.5 - 1)) < 1e-6
    assert pil_to_tensor(rgb).shape == (1, 3, 2, 2)
    assert not is_grey(rgb) and is_grey(rgb.convert("L")) and is_grey(rgb.convert("L").convert("RGB"))


def test_grey_cells_of_a_figure_are_drawn_grey(tmp_path):
    from diffprior.figures import image_table
    ramp = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4).repeat(1, 1, 4, 1)[..., :16, :16]
    path = image_table([[ramp, ramp.expand(-1, 3, -1, -1)]], tmp_path / "t.png")
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 1) and (np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 1)


def test_an_animation_or_an_invisible_image_is_read_with_a_warning(tmp_path):
    """Both were read silently: an animation as its first frame, a transparent-everywhere image as blank white."""
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGBA", (16, 16), (200, 10, 10, 0)).save(tmp_path / "invisible.png")
    with pytest.warns(UserWarning, match="anim.gif is an animation of 3 frames: only the first is read"):
        red = load_image(tmp_path / "anim.gif")
    assert red[0, 0].mean() > 0.9 and red[0, 1:].mean() < -0.9
    with pytest.warns(UserWarning, match="invisible.png is transparent everywhere: it reads as a blank white image"):
        assert (load_image(tmp_path / "invisible.png") == 1).all()
    half = np.zeros((16, 16, 4), dtype=np.uint8)
    half[:8] = (200, 10, 10, 255)
    Image.fromarray(half).save(tmp_path / "half.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # partly transparent, or transparency dropped: nothing to say
        load_image(tmp_path / "half.png")
        load_image(tmp_path / "invisible.png", alpha="drop")
        with pytest.raises(ValueError, match="transparent pixels"):  # a mask says it in its own error
            load_mask(tmp_path / "invisible.png", (16, 16))
