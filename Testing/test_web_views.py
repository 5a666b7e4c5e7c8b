"""qsm web in a real browser: the maps of a run in the slice views, and the slice planes in the 3D view.

After the fast run of the sample head, *Shown in the views* switches the red
view to the local field, the total field (alone, with the diverging display
that ``qsmslicer.display.show_field`` sets in the Logic) and the brain mask (a
labelmap coloured over the magnitude). The checks are pixel statistics of
screenshots of the red view, against the downloaded mask for the mask view.
"""

import re
import time

import numpy as np
import pytest

from web_support import browser, page, server  # noqa: F401 (the fixtures the tests use)
from web_support import download, image_stats, load_sample, status

RED_VIEW = "div:has(> #qsm-view-Red) img.image-display-area"
THREE_D_VIEW = "div:has(> #qsm-view-ThreeD) img.image-display-area"


def _choose(page, select, text):
    """Pick the item ``text`` of a Vuetify select, as a user does (open the list, click the item)."""
    page.locator(f".v-field:has({select})").click()
    page.locator(".v-overlay .v-list-item", has_text=text).first.click()


def _show(page, key, text):
    _choose(page, "#qsm-shown-map", text)
    page.wait_for_function(f"() => window.trame.state.get('shown_map') === '{key}'", timeout=10_000)
    page.wait_for_timeout(1500)  # the next frame of the views
    return image_stats(page.locator(RED_VIEW).screenshot())


def test_the_slice_planes_appear_in_the_3d_view_when_inputs_load(page):
    three_d = page.locator(THREE_D_VIEW)
    three_d.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    empty = image_stats(three_d.screenshot())
    load_sample(page)
    page.wait_for_timeout(2000)
    shown = image_stats(three_d.screenshot())
    print(f"3D view before loading: {empty}; after: {shown}")
    # Measured (508 x 424 pixels): the empty view is Slicer's grey gradient background, std 8.9; with the
    # red, yellow and green planes of the 2 mm head, seen obliquely, std 49 (the head's grey levels and the
    # planes' black margins). Bounds: the empty view under half-way, the planes over half the measured std.
    assert min(shown["shape"]) > 150
    assert empty["std"] < 15, empty
    assert shown["std"] > 25, shown
    assert shown["red"] < 0.001 and shown["blue"] < 0.001, shown  # the grey magnitude on the planes


def test_the_fields_and_the_mask_of_a_run_are_shown_in_the_red_view(page, tmp_path):
    import nibabel as nib

    load_sample(page)
    page.click("#qsm-preset-fast")
    page.wait_for_function("() => window.trame.state.get('inversion') === 'tkd'", timeout=10_000)
    started = time.monotonic()
    page.click("#qsm-run")
    page.wait_for_function("() => document.querySelector('#qsm-download-chi') !== null", timeout=60_000)
    assert "Susceptibility map ready" in status(page), status(page)
    page.wait_for_function("() => window.trame.state.get('shown_map') === 'susceptibility'", timeout=10_000)
    print(f"fast run: {time.monotonic() - started:.1f} s")

    caption = page.locator("#qsm-shown-caption")
    assert caption.inner_text().startswith("Susceptibility over the magnitude, -0.15 to +0.15 ppm"), \
        caption.inner_text()
    magnitude = _show(page, "magnitude", "Magnitude")
    local = _show(page, "local_field", "Local field")
    local_caption = caption.inner_text()
    total = _show(page, "total_field", "Total field")
    mask_view = _show(page, "mask", "Brain mask")
    print(f"red view: magnitude {magnitude}\nlocal field {local}\ntotal field {total}\nmask {mask_view}")
    assert magnitude["coloured"] < 0.001, magnitude

    # The fields alone, blue-white-red centred on 0 with the Logic's window (+- the 99th percentile of |field|
    # in the mask): white (zero) outside the mask but inside the volume, so the whole 82 x 103 voxel slice is
    # above the black background (measured 66.8 % of the view, the magnitude 47.8 %: its air is black).
    # Measured: the local field (both signs around veins and nuclei) 5.5 % clearly red, 11.0 % clearly blue;
    # the total field (the background field, mostly positive here) 1.4 % red, 0.09 % blue. Bounds: about half.
    for field in (local, total):
        assert field["non_background"] > magnitude["non_background"] + 0.1, (magnitude, field)
    assert local["red"] > 0.025 and local["blue"] > 0.05, local
    assert total["red"] > 0.007 and total["blue"] > 0.0003, total
    assert abs(local["blue"] - total["blue"]) > 0.05, (local, total)  # two different maps

    # The mask: a labelmap filled at opacity 0.5 over the magnitude, the only coloured pixels of the view.
    # Its coloured share of the slice's footprint (the fields' non-black pixels: the whole slice) must be the
    # mask's share of the axial slice the red view shows, the middle one (k = 51 of 103). Tolerance 0.008: a
    # one-pixel shift of the mask's border (about 220 voxel edges of 4 pixels each) moves the share by
    # 0.006, while the next slice's share differs by 0.011 (measured difference 0.003).
    mask = np.asarray(nib.load(str(download(page, "#qsm-download-mask", tmp_path / "mask.nii.gz"))).dataobj) > 0
    middle = mask.shape[2] // 2
    expected = float(mask[:, :, middle].mean())
    seen = mask_view["coloured"] / local["non_background"]
    print(f"mask: {seen:.4f} of the slice coloured; the mask holds {expected:.4f} of slice {middle}")
    assert abs(seen - expected) < 0.008, (seen, expected)
    assert abs(mask_view["non_background"] - magnitude["non_background"]) < 0.01  # the magnitude under it

    # the local field's window, as the caption gives it from the display node, is the Logic's (show_field):
    # +- the 99th percentile of |local field| in the mask, from the downloaded files
    local_field = np.asarray(nib.load(str(download(page, "#qsm-download-local_field",
                                                   tmp_path / "local_field.nii.gz"))).dataobj)
    window = float(np.percentile(np.abs(local_field[mask]), 99.0))
    match = re.match(r"Local field, -([0-9.e+-]+) to \+([0-9.e+-]+) Hz", local_caption)
    assert match is not None and match.group(1) == match.group(2), local_caption
    print(f"local field window: {local_caption}; 99th percentile of |field| in the mask {window:.5g} Hz")
    assert float(match.group(1)) == pytest.approx(window, rel=1e-3)  # 4 significant digits in the caption

    # back to the susceptibility: no mask left in the label layer
    chi = _show(page, "susceptibility", "Susceptibility")
    # as in test_web_app's fast run (measured 3.1 % red, 1.1 % blue); the mask left in the label layer would
    # add its 30 % of blue
    assert chi["red"] > 0.015 and 0.005 < chi["blue"] < 0.05, chi
