"""qsm web in a real browser: a BIDS subject of --data through the Data panel, and SWI with its mIP.

The BIDS test writes a dataset with ``qsmlib.io.write_megre`` into the server's
data folder, chooses a subject and session in the panel, and checks the echo
times and field strength the panel shows against the dataset's sidecars. The
SWI test runs SWI on the sample head in the browser and compares the
downloaded SWI and mIP with ``SwiLogic().process`` run here on the same head.
"""

import os
import time

import numpy as np

from web_support import browser, page, server  # noqa: F401 (the fixtures the tests use)
from web_support import download, image_stats, load_sample, status

RED_VIEW = "div:has(> #qsm-view-Red) img.image-display-area"


def _choose(page, select, text):
    """Pick the item ``text`` of a Vuetify select, as a user does (open the list, click the item)."""
    page.locator(f".v-field:has({select})").click()
    page.locator(".v-overlay .v-list-item", has_text=text).first.click()


def test_a_bids_subject_loads_through_the_panel_with_its_sidecars_values(page, server):
    from qsmlib.io import write_megre
    from qsmslicer import sample_data

    _url, data, _log = server
    head = sample_data.simulated_head(2.0)

    def path_for(name):
        path = data / "study" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # sub-01 with the simulation's own values; sub-02 session b with others, which the panel must show
    write_megre(path_for, "01", head.magnitude, head.phase, list(head.te_s), 3.0, head.affine)
    te_b = [0.003, 0.007, 0.011, 0.015, 0.019]
    for session, te_s, b0_t in (("a", list(head.te_s), 3.0), ("b", te_b, 7.0)):
        write_megre(path_for, "02", head.magnitude, head.phase, te_s, b0_t, head.affine, session=session)

    page.reload()  # the folders are read when the page connects
    page.wait_for_selector("#qsm-load-bids", timeout=60_000)
    page.wait_for_function("() => window.trame.state.get('bids_dataset') === 'study' && "
                           "window.trame.state.get('bids_subjects').length === 2", timeout=10_000)
    _choose(page, "#qsm-bids-subject", "02")
    page.wait_for_function("() => JSON.stringify(window.trame.state.get('bids_sessions')) === '[\"a\",\"b\"]'",
                           timeout=10_000)
    _choose(page, "#qsm-bids-session", "b")
    page.wait_for_function("() => window.trame.state.get('bids_subject') === '02' && "
                           "window.trame.state.get('bids_session') === 'b'", timeout=10_000)
    page.click("#qsm-load-bids")
    page.wait_for_function("() => document.querySelector('#qsm-inputs').innerText.includes('echoes') || "
                           "window.trame.state.get('status_type') === 'error'", timeout=30_000)
    assert page.locator("#qsm-inputs").inner_text().strip() == (
        "BIDS study: sub-02/ses-b, 5 echoes; echo times and field strength from the sidecars."), status(page)
    assert [float(t) for t in page.locator("#qsm-te").input_value().split(",")] == te_b
    assert float(page.locator("#qsm-b0").input_value()) == 7.0
    assert page.locator("#qsm-te").input_value() == "0.003, 0.007, 0.011, 0.015, 0.019"
    assert page.locator("#qsm-b0").input_value() == "7"
    assert page.locator("#qsm-run").is_enabled()
    page.wait_for_timeout(1500)
    shown = image_stats(page.locator(RED_VIEW).screenshot())
    # the first echo's magnitude, grey (as for NIfTI files: about half the view above the background)
    assert shown["non_background"] > 0.25 and shown["red"] < 0.001, shown

    # a dataset folder that is a link out of --data is refused in the status line, and the inputs stay
    outside = data.parent / "outside-study"
    (data / "study").rename(outside)
    (data / "study").symlink_to(outside)
    page.click("#qsm-load-bids")
    page.wait_for_function("() => window.trame.state.get('status_type') === 'error'", timeout=10_000)
    assert status(page).startswith(f"BIDS dataset study: leads to {outside}, outside the data folder {data}"), (
        status(page))
    assert "sub-02/ses-b" in page.locator("#qsm-inputs").inner_text()


def test_a_dicom_folder_loads_through_the_panel_with_its_attributes(page, server):
    import dicom_fixtures as fixtures

    _url, data, _log = server
    fixtures.write_siemens(data / "scans" / "gre")
    page.locator("#qsm-dicom").fill("scans/gre")
    page.locator("#qsm-dicom").press("Tab")
    page.wait_for_function("() => window.trame.state.get('dicom_folder') === 'scans/gre'", timeout=10_000)
    page.click("#qsm-load-dicom")
    page.wait_for_function("() => document.querySelector('#qsm-inputs').innerText.includes('echoes') || "
                           "window.trame.state.get('status_type') === 'error'", timeout=30_000)
    assert page.locator("#qsm-inputs").inner_text().strip() == (
        "DICOM scans/gre: series 6 'gre_qsm_pha', series 5 'gre_qsm_mag', 3 echoes; echo times and field "
        "strength from the DICOM attributes."), status(page)
    assert [float(t) for t in page.locator("#qsm-te").input_value().split(",")] == list(fixtures.TE_S)
    assert float(page.locator("#qsm-b0").input_value()) == fixtures.B0_T
    assert page.locator("#qsm-run").is_enabled()
    # a folder that holds no DICOM series: the status line names it and what is wrong
    (data / "notes").mkdir()
    (data / "notes" / "readme.txt").write_text("not DICOM")
    page.locator("#qsm-dicom").fill("notes")
    page.locator("#qsm-dicom").press("Tab")
    page.wait_for_function("() => window.trame.state.get('dicom_folder') === 'notes'", timeout=10_000)
    page.click("#qsm-load-dicom")
    page.wait_for_function("() => window.trame.state.get('status_type') === 'error'", timeout=30_000)
    assert status(page).startswith("DICOM folder notes: "), status(page)
    assert "scans/gre" in page.locator("#qsm-inputs").inner_text()  # the loaded inputs stay


def test_swi_of_the_sample_head_is_shown_and_downloads_swilogics_result(page, tmp_path):
    import nibabel as nib
    import slicer

    from qsmslicer import nodes
    from qsmslicer.reconstruction import ReconstructionLogic
    from qsmslicer.swi import SwiLogic

    load_sample(page)
    red = page.locator(RED_VIEW)
    red.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    magnitude_view = image_stats(red.screenshot())
    started = time.monotonic()
    page.click("#qsm-swi-run")
    page.wait_for_function("() => document.querySelector('#qsm-download-swi') !== null || "
                           "window.trame.state.get('swi_status_type') === 'error'", timeout=60_000)
    swi_s = time.monotonic() - started
    swi_status = page.locator("#qsm-swi-status").inner_text()
    assert "SWI and mIP ready (5 echoes" in swi_status, swi_status
    assert page.evaluate("() => window.trame.state.get('shown_map')") == "swi"
    page.wait_for_timeout(1500)  # the next frame of the views, with the SWI
    swi_view = image_stats(red.screenshot())
    print(f"red view: magnitude {magnitude_view}; SWI {swi_view}; SWI took {swi_s:.1f} s in the browser")
    assert min(swi_view["shape"]) > 150
    assert swi_view["non_background"] > 0.25 and swi_view["std"] > 30, swi_view
    assert swi_view["red"] < 0.001 and swi_view["blue"] < 0.001, swi_view  # grey, not the susceptibility colours
    # measured: the magnitude's std 78, the SWI's 58 (veins and iron darkened, its own window)
    assert abs(swi_view["std"] - magnitude_view["std"]) > 5, (magnitude_view, swi_view)
    if os.environ.get("QSM_WEB_SWI_SCREENSHOT"):
        page.screenshot(path=os.environ["QSM_WEB_SWI_SCREENSHOT"])

    swi_file = nib.load(str(download(page, "#qsm-download-swi", tmp_path / "swi.nii.gz")))
    mip_file = nib.load(str(download(page, "#qsm-download-mip", tmp_path / "mip.nii.gz")))

    # the same SWI through the shared Logic, in this process, on a plain scene
    scene = slicer.vtkMRMLScene()
    magnitude, phase, head = ReconstructionLogic().addSimulatedHead(scene=scene, voxel_size_mm=2.0)
    expected = SwiLogic().process(magnitude, phase, te_s=list(head.te_s))
    for got_file, node in ((swi_file, expected.swi), (mip_file, expected.mip)):
        got = np.asarray(got_file.dataobj, dtype=np.float32)
        want = nodes.array_from_volume(node)
        assert got.shape == want.shape == head.chi_ppm.shape
        assert np.allclose(got, want, rtol=1e-6, atol=1e-6), float(np.max(np.abs(got - want)))
        np.testing.assert_allclose(got_file.affine, nodes.ijk_to_ras(node), atol=1e-6)
        assert float(got.std()) > 0
    # the mIP is the SWI's minimum over slabs: never above it
    swi, mip = (np.asarray(f.dataobj, dtype=np.float32) for f in (swi_file, mip_file))
    assert np.all(mip <= swi + 1e-6) and float(np.mean(mip < swi - 1e-6)) > 0.1

    # the view selector shows the mIP
    _choose(page, "#qsm-shown-map", "mIP")
    page.wait_for_function("() => window.trame.state.get('shown_map') === 'mip'", timeout=10_000)
    page.wait_for_timeout(1500)
    mip_view = image_stats(red.screenshot())
    print(f"red view with the mIP: {mip_view}")
    assert mip_view["non_background"] > 0.25 and abs(mip_view["std"] - swi_view["std"]) > 0.5, (swi_view, mip_view)

    # a reconstruction afterwards: the views and the selector turn to its map; SWI stays offered
    page.click("#qsm-preset-fast")
    page.wait_for_function("() => window.trame.state.get('inversion') === 'tkd'", timeout=10_000)
    page.click("#qsm-run")
    page.wait_for_function("() => document.querySelector('#qsm-download-chi') !== null", timeout=60_000)
    page.wait_for_function("() => window.trame.state.get('shown_map') === 'susceptibility'", timeout=10_000)
    page.wait_for_timeout(1500)
    chi_view = image_stats(red.screenshot())
    assert chi_view["red"] > 0.015 and chi_view["blue"] > 0.005, chi_view  # as in test_web_app's fast run
    assert page.locator("#qsm-download-swi").count() == 1


def test_swi_settings_typed_in_the_browser_reach_swilogic(page, tmp_path):
    import nibabel as nib
    import slicer

    from qsmslicer import nodes
    from qsmslicer.reconstruction import ReconstructionLogic
    from qsmslicer.swi import SwiLogic

    load_sample(page)

    def settings(kind, power, filter_size, slab_mm, flip):
        _choose(page, "#qsm-swi-kind", kind)
        for box, value in (("#qsm-swi-power", power), ("#qsm-swi-filter-size", filter_size),
                           ("#qsm-swi-slab-mm", slab_mm)):
            page.locator(box).fill(value)
        if page.locator("#qsm-swi-flip").is_checked() != flip:
            page.locator("#qsm-swi-flip").click()
        page.wait_for_function(f"() => window.trame.state.get('swi_kind') === {kind!r} && "
                               f"window.trame.state.get('swi_flip') === {str(flip).lower()}", timeout=10_000)
        before = page.evaluate("() => window.trame.state.get('swi_status')")
        page.click("#qsm-swi-run")
        page.wait_for_function("(before) => !window.trame.state.get('swi_running') && "
                               "window.trame.state.get('swi_status') !== before", arg=before, timeout=60_000)
        return page.locator("#qsm-swi-status").inner_text()

    refusal = settings("symmetric", "2", "many", "16", True)
    assert refusal == "SWI high-pass filter size: 'many' is not a whole number; give one, for example 32", refusal
    refusal = settings("symmetric", "2", "24", "-1", True)
    assert refusal.startswith("mIP slab: '-1' is out of range; give a number mm >= 0"), refusal
    ready = settings("symmetric", "2", "24", "16", True)
    assert "SWI and mIP ready" in ready, ready
    swi = np.asarray(nib.load(str(download(page, "#qsm-download-swi", tmp_path / "swi.nii.gz"))).dataobj)
    mip = np.asarray(nib.load(str(download(page, "#qsm-download-mip", tmp_path / "mip.nii.gz"))).dataobj)

    scene = slicer.vtkMRMLScene()
    magnitude, phase, head = ReconstructionLogic().addSimulatedHead(scene=scene, voxel_size_mm=2.0)
    expected = SwiLogic().process(magnitude, phase, te_s=list(head.te_s), kind="symmetric", power=2.0,
                                  filter_size=24, slab_mm=16.0, phase_sign=-1)
    defaults = SwiLogic().process(magnitude, phase, te_s=list(head.te_s))
    for got, name in ((swi, "swi"), (mip, "mip")):
        want = nodes.array_from_volume(getattr(expected, name))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
        # the settings changed the result: the defaults' volume is another one
        assert np.abs(want - nodes.array_from_volume(getattr(defaults, name))).max() > 0.01 * np.abs(want).max()
