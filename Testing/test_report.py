"""Report pictures: the PNG encoder round-trips through an independent decoder; colours mean what they say."""

import numpy as np
from PIL import Image

from qsmlib.report import CHI_WINDOW_PPM, OUTSIDE_RGB, diverging_rgb, overview_image, write_png


def test_png_round_trip_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 256, (17, 31), dtype=np.uint8), rng.integers(0, 256, (9, 5, 3), dtype=np.uint8)):
        path = tmp_path / "x.png"
        write_png(path, image)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


def test_diverging_colours_are_centred_on_zero():
    rgb = diverging_rgb(np.array([-1.0, 0.0, 1.0, 5.0]) * CHI_WINDOW_PPM, CHI_WINDOW_PPM)
    assert tuple(rgb[1]) == (255, 255, 255)                 # 0 ppm is white
    assert rgb[0, 2] > rgb[0, 0] and rgb[2, 0] > rgb[2, 2]   # negative blue, positive red
    np.testing.assert_array_equal(rgb[3], rgb[2])           # clipped at the window


def test_overview_marks_outside_the_mask():
    mask = np.zeros((20, 24, 16), dtype=bool)
    mask[4:16, 4:20, 3:13] = True
    chi = np.where(mask, 0.0, 0.0)
    picture = overview_image([("chi", chi, "chi")], mask, (1.0, 1.0, 1.0))
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert OUTSIDE_RGB in colours and (255, 255, 255) in colours
    # each of the three tiles shows the mask's extent in white (0 ppm inside)
    assert np.sum(np.all(picture == 255, axis=-1)) == 12 * 16 + 12 * 10 + 16 * 10
