"""qsm web in a real browser: Debian's Chromium, headless, driven by Playwright, against ``qsm web``.

Each test starts ``qsm web --port <free port> --data <tmp folder>`` as its own
process (the app's state is shared by all its browser tabs) and clicks through
the panel as a user would. The reconstruction test compares the map that the
browser downloads with ``ReconstructionLogic().process`` run here on the same
simulated head: the round trip through the UI gives the shared Logic's result.

Set ``QSM_WEB_SCREENSHOT=path.png`` to save a screenshot of the app after the
run (the README's Resources/Screenshots/web-app.png is made that way).
"""

import os
import time

import numpy as np
import pytest

from web_support import browser, page, server  # noqa: F401 (the fixtures the tests use)
from web_support import download as _download
from web_support import image_stats as _image_stats
from web_support import load_files as _load_files
from web_support import load_sample as _load_sample
from web_support import status as _status


def test_sample_head_fast_run_shows_the_map_and_downloads_the_logics_result(page, tmp_path):
    import json

    import nibabel as nib
    import slicer

    from qsmslicer import nodes
    from qsmslicer.reconstruction import PROVENANCE_ATTRIBUTE, ReconstructionLogic

    _load_sample(page)
    assert page.locator("#qsm-te").input_value() == "0.004, 0.01, 0.016, 0.022, 0.028"
    assert page.locator("#qsm-b0").input_value() == "3"
    red = page.locator("div:has(> #qsm-view-Red) img.image-display-area")
    red.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    before = _image_stats(red.screenshot())

    page.click("#qsm-preset-fast")
    page.wait_for_function("() => document.querySelector('#qsm-inversion').closest('.v-select')"
                           ".innerText.includes('tkd')", timeout=10_000)
    started = time.monotonic()
    page.click("#qsm-run")
    page.wait_for_function("() => document.querySelector('#qsm-download-chi') !== null", timeout=60_000)
    run_s = time.monotonic() - started
    assert "Susceptibility map ready" in _status(page), _status(page)
    assert page.locator("#qsm-stage").inner_text().strip() == "Done 100 %"
    page.wait_for_timeout(1500)  # the next frame of the views, with the map over the magnitude

    after = _image_stats(red.screenshot())
    print(f"red view before the run: {before}; after: {after}")
    # The red view (about 500 x 420 pixels here) shows the axial slice through the basal ganglia. Measured:
    # the magnitude alone, grey, std 78, 48 % of pixels above the black background, no coloured pixel;
    # with the map (blue-white-red, +-0.15 ppm, opacity 0.8 as in Slicer) std 102, 67 %, 3.1 % clearly red
    # (iron-rich nuclei, veins) and 1.1 % clearly blue. A blank or grey view has no red or blue pixel at all;
    # the bounds are about half the measured values.
    assert min(after["shape"]) > 150
    assert before["red"] < 0.001 and before["blue"] < 0.001, before
    assert after["std"] > 60, after
    assert after["non_background"] > before["non_background"] + 0.1, (before, after)
    assert after["red"] > 0.015 and after["blue"] > 0.005, after
    if os.environ.get("QSM_WEB_SCREENSHOT"):
        page.screenshot(path=os.environ["QSM_WEB_SCREENSHOT"])

    with page.expect_download() as download:
        page.click("#qsm-download-chi")
    path = tmp_path / "chi.nii.gz"
    download.value.save_as(path)
    downloaded = nib.load(str(path))
    with page.expect_download() as provenance_download:
        page.click("#qsm-download-provenance")
    provenance_path = tmp_path / "provenance.json"
    provenance_download.value.save_as(provenance_path)

    # the same run through the shared Logic, in this process, on a plain scene
    scene = slicer.vtkMRMLScene()
    logic = ReconstructionLogic()
    magnitude, phase, head = logic.addSimulatedHead(scene=scene, voxel_size_mm=2.0)
    outputs = logic.process(magnitude, phase, te_s=list(head.te_s), b0_t=float(head.b0_t), preset="fast",
                            unwrap="romeo", bgremove="vsharp", inversion="tkd", reference="brain")
    expected = nodes.array_from_volume(outputs.susceptibility)
    chi = np.asarray(downloaded.dataobj, dtype=np.float32)
    assert chi.shape == expected.shape == head.chi_ppm.shape
    assert np.allclose(chi, expected, rtol=0, atol=1e-5), float(np.max(np.abs(chi - expected)))
    np.testing.assert_allclose(downloaded.affine, nodes.ijk_to_ras(outputs.susceptibility), atol=1e-6)
    assert float(np.abs(chi).max()) > 0.05  # a map, not zeros
    provenance = json.loads(provenance_path.read_text())
    assert provenance["inputs"]["preset"] == "fast"
    assert provenance["config"] == json.loads(outputs.susceptibility.GetAttribute(PROVENANCE_ATTRIBUTE))["config"]
    assert [provenance["config"][stage] for stage in ("unwrap", "bgremove", "inversion")] == ["romeo", "vsharp", "tkd"]
    assert "(romeo, vsharp, tkd; " in _status(page)
    print(f"fast run through the browser: {run_s:.1f} s")


def test_cancel_stops_a_consensus_run(page):
    _load_sample(page)
    assert page.locator("#qsm-preset-consensus").is_checked()
    page.click("#qsm-run")
    page.wait_for_function("() => !document.querySelector('#qsm-cancel').disabled", timeout=10_000)
    page.wait_for_timeout(1500)  # into the run
    assert "Reconstructing" in _status(page)
    clicked = time.monotonic()
    page.click("#qsm-cancel")
    page.wait_for_function("() => document.querySelector('#qsm-status').innerText.includes('cancelled')",
                           timeout=10_000)
    cancel_s = time.monotonic() - clicked
    assert _status(page).strip() == "Reconstruction cancelled; no map was made."
    assert cancel_s < 5, cancel_s
    assert page.locator("#qsm-download-chi").count() == 0
    assert page.locator("#qsm-run").is_enabled()
    print(f"cancelled {cancel_s:.2f} s after the click")


def test_a_path_outside_the_data_folder_is_refused(page, server):
    _url, data, _log = server
    page.locator("#qsm-magnitude").fill("../../../../../../../../etc/passwd")
    page.locator("#qsm-phase").fill("../../../../../../../../etc/passwd")
    page.locator("#qsm-phase").press("Tab")
    page.wait_for_function("() => window.trame.state.get('magnitude_name') === '../../../../../../../../etc/passwd' "
                           "&& window.trame.state.get('phase_name') === '../../../../../../../../etc/passwd'",
                           timeout=10_000)
    page.click("#qsm-load-files")
    page.wait_for_function("() => document.querySelector('#qsm-status').innerText.includes('outside')",
                           timeout=10_000)
    status = _status(page)
    assert f"../../../../../../../../etc/passwd: leads to /etc/passwd, outside the data folder {data}" in status
    assert "copy the file into the data folder" in status
    assert page.locator("#qsm-run").is_disabled()
    assert page.locator("#qsm-inputs").inner_text().strip() == "No input loaded."


def test_http_requests_get_no_file_of_the_machine_or_of_the_data_folder(server):
    """Only the web client is served over HTTP: paths that climb out of it, or name files, get none.

    The browser reaches --data only through the panel (names checked by
    DataFolder) and gets results only as downloads the app makes; a request
    for any other file, traversal encoded or not, must find nothing.
    """
    import http.client
    from urllib.parse import urlsplit

    url, data, _log = server
    token = "qsm-web-secret-7f3a91"
    (data.parent / "secret.txt").write_text(token)
    (data / "inside.txt").write_text(token)
    address = urlsplit(url)

    def get(path):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    status, body = get("/index.html")
    assert status == 200 and b"<html" in body.lower()  # the probes below reach the real server
    probes = ["/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt",
              f"{data.parent}/secret.txt", "/inside.txt", f"{data}/inside.txt", "/data/inside.txt",
              "/../../../../../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "/static/../../../../../../../../etc/passwd", "/etc/passwd"]
    for path in probes:
        status, body = get(path)
        assert token.encode() not in body and b"root:" not in body, (path, status)
        assert status in (400, 403, 404), (path, status)


def test_nifti_files_of_the_data_folder_load_with_their_sidecar(page, server):
    import json

    from qsmlib.io import save_nifti
    from qsmslicer import sample_data

    _url, data, _log = server
    head = sample_data.simulated_head(2.0)
    (data / "sub").mkdir()
    save_nifti(data / "sub" / "mag.nii.gz", head.magnitude, head.affine)
    save_nifti(data / "sub" / "phase.nii.gz", head.phase, head.affine)
    (data / "sub" / "mag.json").write_text(json.dumps({"EchoTime": [float(t) for t in head.te_s],
                                                        "MagneticFieldStrength": 7}))
    page.reload()  # the file list is read when the page connects
    page.wait_for_selector("#qsm-load-files", timeout=60_000)
    page.click("#qsm-magnitude")
    page.wait_for_selector(".v-overlay .v-list-item", timeout=10_000)
    assert page.locator(".v-overlay .v-list-item").all_inner_texts() == ["sub/mag.nii.gz", "sub/phase.nii.gz"]
    page.locator(".v-overlay .v-list-item", has_text="sub/mag.nii.gz").click()
    page.locator("#qsm-phase").fill("sub/phase.nii.gz")
    page.locator("#qsm-phase").press("Tab")
    # both boxes hold their name (the Load click sends them)
    page.wait_for_function("() => window.trame.state.get('magnitude_name') === 'sub/mag.nii.gz' && "
                           "window.trame.state.get('phase_name') === 'sub/phase.nii.gz'", timeout=10_000)
    page.click("#qsm-load-files")
    page.wait_for_function("() => document.querySelector('#qsm-inputs').innerText.includes('echoes') || "
                           "window.trame.state.get('status_type') === 'error'", timeout=30_000)
    assert "echoes" in page.locator("#qsm-inputs").inner_text(), _status(page)
    assert page.locator("#qsm-inputs").inner_text().strip() == (
        "sub/mag.nii.gz and sub/phase.nii.gz, 5 echoes; echo times and field strength from mag.json.")
    assert page.locator("#qsm-te").input_value() == "0.004, 0.01, 0.016, 0.022, 0.028"
    assert page.locator("#qsm-b0").input_value() == "7"
    assert page.locator("#qsm-run").is_enabled()
    red = page.locator("div:has(> #qsm-view-Red) img.image-display-area")
    page.wait_for_timeout(1500)
    shown = _image_stats(red.screenshot())
    # the first echo's magnitude, grey: measured 48 % of the view above the black background
    assert shown["non_background"] > 0.25 and shown["red"] < 0.001, shown


def _fast_run(page):
    _load_sample(page)
    page.click("#qsm-preset-fast")
    page.wait_for_function("() => document.querySelector('#qsm-inversion').closest('.v-select')"
                           ".innerText.includes('tkd')", timeout=10_000)
    page.click("#qsm-run")
    page.wait_for_function("() => document.querySelector('#qsm-download-chi') !== null", timeout=60_000)


def test_roi_segments_painted_in_the_browser_give_qsmlibs_statistics(page, tmp_path):
    import csv

    import nibabel as nib

    from qsmlib.batch import label_statistics

    _fast_run(page)
    page.click("#qsm-roi-create")
    page.wait_for_selector("#qsm-roi-paint", timeout=10_000)
    page.wait_for_function("() => window.trame.state.get('roi_segments').length === 11", timeout=10_000)
    page.locator("#qsm-roi-paint").check()
    page.wait_for_function("() => window.trame.state.get('roi_paint') === true", timeout=10_000)
    red = page.locator("div:has(> #qsm-view-Red) img.image-display-area")
    box = red.bounding_box()
    x, y = box["x"] + 0.45 * box["width"], box["y"] + 0.45 * box["height"]
    edits = page.evaluate("() => window.trame.state.get('roi_edits')")
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + 4 * step, y, steps=2)
        page.wait_for_timeout(50)
    page.mouse.up()
    # the stroke has reached the segmentation, and no edit came in for half a second
    page.wait_for_function(f"() => window.trame.state.get('roi_edits') > {edits}", timeout=10_000)
    while True:
        edits = page.evaluate("() => window.trame.state.get('roi_edits')")
        page.wait_for_timeout(500)
        if page.evaluate("() => window.trame.state.get('roi_edits')") == edits:
            break
    page.click("#qsm-roi-compute")
    page.wait_for_selector("#qsm-roi-table", timeout=10_000)
    assert page.locator("#qsm-roi-table tbody tr").count() == 11
    assert "Statistics of 11 segments (reference: none)" in _status(page)

    chi_file = nib.load(str(_download(page, "#qsm-download-chi", tmp_path / "chi.nii.gz")))
    labels_file = nib.load(str(_download(page, "#qsm-download-roi-labels", tmp_path / "segments.nii.gz")))
    with open(_download(page, "#qsm-download-roi-csv", tmp_path / "statistics.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    chi = np.asarray(chi_file.dataobj, dtype=np.float32)
    labels = np.asarray(labels_file.dataobj).astype(np.int64)
    np.testing.assert_allclose(labels_file.affine, chi_file.affine, atol=1e-6)

    # The stroke: 40 screen pixels (about 20 mm at this zoom) with a 6 mm brush on 2 mm voxels, in the axial
    # red view, painted the first segment (Left caudate) only: about 10 x 3 voxels of one axial slice
    # (measured 39 voxels).
    painted = labels == 1
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert 15 < int(painted.sum()) < 100, int(painted.sum())
    assert len(np.unique(np.nonzero(painted)[2])) == 1  # one axial slice (the head's k axis is inferior-superior)
    assert [row["Segment"] for row in table][:2] == ["Left caudate", "Right caudate"]
    assert all(row["Voxel count"] == "0" for row in table[1:])

    # the table equals qsmlib's statistics of the downloaded map on the painted voxels
    expected = label_statistics(chi, labels, labels > 0, {1: "Left caudate"})
    assert len(expected) == 1
    row = table[0]
    assert int(row["Voxel count"]) == expected[0]["voxels"] == int(painted.sum())
    assert float(row["Mean"]) == pytest.approx(expected[0]["mean_ppm"], rel=1e-5, abs=1e-7)
    assert float(row["Median"]) == pytest.approx(expected[0]["median_ppm"], rel=1e-5, abs=1e-7)
    assert float(row["Volume"]) == pytest.approx(8.0 * expected[0]["voxels"])  # 2 mm voxels

    # The plot: RoiLogic.createBarPlot's chart drawn in the page, one bar per segment (the table's rows, in its
    # order) with the table's mean, the SD as an error bar; segments without voxels have a bar of no height.
    plot = page.locator("#qsm-roi-plot svg")
    assert "Mean susceptibility (ppm)" in plot.locator(".qsm-y-title").text_content()
    bars = plot.locator("rect.qsm-bar").evaluate_all(
        "rects => rects.map(r => [r.dataset.label, Number(r.dataset.value), r.getBBox().height])")
    assert [label for label, _value, _height in bars] == [row["Segment"] for row in table]
    assert bars[0][1] == pytest.approx(float(row["Mean"]), rel=1e-5, abs=1e-7)
    assert bars[0][2] > 5  # pixels: the only bar with a height
    assert all(np.isnan(value) and height == 0 for _label, value, height in bars[1:]), bars
    error_bars = plot.locator("line.qsm-error-bar").evaluate_all(
        "lines => lines.map(l => [l.dataset.label, Number(l.dataset.low), Number(l.dataset.high)])")
    assert len(error_bars) == 1 and error_bars[0][0] == "Left caudate", error_bars
    assert error_bars[0][1] == pytest.approx(float(row["Mean"]) - float(row["SD"]), rel=1e-5, abs=1e-7)
    assert error_bars[0][2] == pytest.approx(float(row["Mean"]) + float(row["SD"]), rel=1e-5, abs=1e-7)

    # the painted segment as its own reference (the map is already referenced to the brain, so its mean is
    # 0.021 ppm here): the table and the plot are recomputed, the plot from the new series only
    page.locator("#qsm-roi-reference-segment").check()
    page.locator(".v-field:has(#qsm-roi-reference-segment)").click()
    page.locator(".v-overlay .v-list-item", has_text="Left caudate").first.click()
    page.wait_for_function("() => window.trame.state.get('roi_reference_segment') !== null", timeout=10_000)
    page.click("#qsm-roi-compute")
    page.wait_for_function("() => window.trame.state.get('roi_reference_text').includes('Left caudate')",
                           timeout=10_000)
    with open(_download(page, "#qsm-download-roi-csv", tmp_path / "statistics-referenced.csv"), newline="") as f:
        referenced = list(csv.DictReader(f))[0]
    assert abs(float(row["Mean"])) > 1e-3 and float(referenced["Mean"]) == pytest.approx(0.0, abs=1e-7)
    bars = plot.locator("rect.qsm-bar").evaluate_all("rects => rects.map(r => Number(r.dataset.value))")
    assert len(bars) == len(table)
    assert bars[0] == pytest.approx(float(referenced["Mean"]), rel=1e-5, abs=1e-7)


def _block_without_background(folder):
    """3-echo magnitude and phase of a 144 x 144 x 120 mm block that fills its image (no background).

    Its automatic brain mask is the whole block, 2171 mL: larger than any adult brain, so the run is
    refused until the mask is accepted. Returns (magnitude, phase, affine, echo times).
    """
    import json

    from qsmlib.io import save_nifti

    rng = np.random.default_rng(0)
    shape, te_s = (48, 48, 40), [0.005, 0.010, 0.015]
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field_hz = 8 * grid[0] * grid[1] + 5 * grid[2]
    magnitude = np.abs(np.stack([100 * np.exp(-20 * t) + rng.normal(0, 1, shape) for t in te_s], -1))
    phase = np.stack([np.angle(np.exp(2j * np.pi * field_hz * t)) for t in te_s], -1)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    save_nifti(folder / "block_mag.nii.gz", magnitude.astype(np.float32), affine)
    save_nifti(folder / "block_phase.nii.gz", phase.astype(np.float32), affine)
    (folder / "block_mag.json").write_text(json.dumps({"EchoTime": te_s, "MagneticFieldStrength": 3}))
    return magnitude, phase, affine, te_s


def test_an_implausible_automatic_mask_is_refused_and_can_be_used_anyway(page, server, tmp_path):
    import json

    import nibabel as nib
    import slicer

    from qsmlib.io import load_nifti
    from qsmlib.io.phase_scaling import phase_to_radians
    from qsmslicer import nodes
    from qsmslicer.reconstruction import ReconstructionLogic

    _url, data, _log = server
    _block_without_background(data)
    page.reload()
    page.wait_for_selector("#qsm-load-files", timeout=60_000)
    _load_files(page, "block_mag.nii.gz", "block_phase.nii.gz")
    page.click("#qsm-preset-fast")
    page.wait_for_function("() => window.trame.state.get('preset') === 'fast'", timeout=10_000)
    assert page.locator("#qsm-run-anyway").count() == 0
    page.click("#qsm-run")
    page.wait_for_selector("#qsm-run-anyway", timeout=60_000)
    refusal = _status(page)
    assert refusal.startswith("The automatic brain mask looks implausible:"), refusal
    assert "2171 mL, is larger than any adult brain" in refusal and "No map was made" in refusal
    assert "--accept-implausible-mask" not in refusal  # the command line's fix is not the browser's
    assert page.locator("#qsm-download-chi").count() == 0

    page.click("#qsm-run-anyway")
    page.wait_for_function("() => document.querySelector('#qsm-download-chi') !== null", timeout=60_000)
    assert "Susceptibility map ready" in _status(page) and "warning(s) below" in _status(page), _status(page)
    assert "automatic brain mask looks implausible" in page.locator("#qsm-warnings").inner_text()
    assert page.locator("#qsm-run-anyway").count() == 0
    provenance = json.loads(_download(page, "#qsm-download-provenance", tmp_path / "provenance.json").read_text())
    check = provenance["checks"]["mask"]
    assert check["verdict"] == "implausible" and check["accepted"] is True and check["source"] == "automatic"
    assert provenance["config"]["inversion"] == "tkd"  # the refused run's settings, mask accepted

    # the map is the Logic's on the same files with the mask accepted
    scene = slicer.vtkMRMLScene()
    magnitude, affine = load_nifti(data / "block_mag.nii.gz")
    phase, scaling = phase_to_radians(load_nifti(data / "block_phase.nii.gz")[0])
    expected = ReconstructionLogic().process(
        nodes.echo_series(scene, magnitude, affine, "M"),
        nodes.echo_series(scene, phase, affine, "P", phase_scaling=scaling),
        te_s=[0.005, 0.010, 0.015], b0_t=3.0, preset="fast", accept_implausible_mask=True)
    chi = np.asarray(nib.load(_download(page, "#qsm-download-chi", tmp_path / "chi.nii.gz")).dataobj)
    want = nodes.array_from_volume(expected.susceptibility)
    assert np.count_nonzero(want) > 0.5 * want.size  # the whole block was inverted
    np.testing.assert_allclose(chi, want, atol=1e-5)


def test_a_brain_mask_file_is_used_and_checked_against_the_inputs(page, server, tmp_path):
    import json

    import nibabel as nib

    from qsmlib.io import save_nifti

    _url, data, _log = server
    magnitude, _phase, affine, _te = _block_without_background(data)
    grid = np.meshgrid(*[np.arange(n) for n in magnitude.shape[:3]], indexing="ij")
    ball = sum((g - (n - 1) / 2) ** 2 for g, n in zip(grid, magnitude.shape[:3])) <= 15 ** 2  # 45 mm radius
    save_nifti(data / "ball_mask.nii.gz", ball.astype(np.uint8), affine, dtype=np.uint8)
    save_nifti(data / "wrong_grid_mask.nii.gz", ball[:-1].astype(np.uint8), affine, dtype=np.uint8)
    page.reload()
    page.wait_for_selector("#qsm-load-files", timeout=60_000)
    _load_files(page, "block_mag.nii.gz", "block_phase.nii.gz")
    page.click("#qsm-preset-fast")
    page.wait_for_function("() => window.trame.state.get('preset') === 'fast'", timeout=10_000)

    def run_with_mask(name):
        page.locator("#qsm-mask").fill(name)
        page.locator("#qsm-mask").press("Tab")
        page.wait_for_function(f"() => window.trame.state.get('mask_name') === {name!r}", timeout=10_000)
        before = page.evaluate("() => window.trame.state.get('status_text')")
        page.click("#qsm-run")
        page.wait_for_function("(before) => window.trame.state.get('status_text') !== before && "
                               "!window.trame.state.get('running') && "
                               "['success', 'warning', 'error'].includes(window.trame.state.get('status_type'))",
                               arg=before, timeout=60_000)
        return _status(page)

    refusal = run_with_mask("wrong_grid_mask.nii.gz")
    assert refusal.startswith("brain mask wrong_grid_mask.nii.gz: mask shape (47, 48, 40) does not match the "
                              "data shape (48, 48, 40)"), refusal
    assert page.locator("#qsm-download-chi").count() == 0
    assert "outside" in run_with_mask("../escape.nii.gz")  # only --data is reachable

    ready = run_with_mask("ball_mask.nii.gz")
    assert "Susceptibility map ready" in ready, ready
    assert page.locator("#qsm-run-anyway").count() == 0  # a brain-sized ball passes the mask check
    provenance = json.loads(_download(page, "#qsm-download-provenance", tmp_path / "provenance.json").read_text())
    assert provenance["inputs"]["mask"] == "ball_mask.nii.gz"
    assert provenance["checks"]["mask"]["source"] == "given"
    assert provenance["checks"]["mask"]["verdict"] != "implausible"
    chi = np.asarray(nib.load(_download(page, "#qsm-download-chi", tmp_path / "chi.nii.gz")).dataobj)
    mask = np.asarray(nib.load(_download(page, "#qsm-download-mask", tmp_path / "mask.nii.gz")).dataobj)
    assert mask.any() and not (mask.astype(bool) & ~ball).any()  # the map's mask lies in the given ball
    assert not chi[~ball].any() and np.count_nonzero(chi[ball]) > 0.5 * ball.sum()


def test_run_takes_the_presets_methods_when_the_page_still_shows_the_previous_ones(tmp_path):
    """Run clicked right after a preset: the page may still show the previous preset's methods.

    The click sends what the page shows (:attr:`QSMWebApp.RUN_FIELDS`); the run
    must take the chosen preset's methods, whether or not the preset's change
    reached the server before the click, and keep a method the user chose.
    """
    from qsmlib.pipeline import PRESETS
    from qsmlib.web.app import QSMWebApp
    from qsmlib.web.data_folder import DataFolder

    app = QSMWebApp(DataFolder(tmp_path), server="qsm-web-preset-race")
    state = app.state
    page_shows = {"te_text": "0.004, 0.008", "b0_text": "3", "preset": "fast", "reference": "brain",
                  "mask_name": "", **PRESETS["consensus"]}                # stale methods beside the new preset
    fast = tuple(PRESETS["fast"][key] for key in ("unwrap", "bgremove", "inversion"))
    assert fast != tuple(PRESETS["consensus"][key] for key in ("unwrap", "bgremove", "inversion"))

    def click_run(server_preset, **server_methods):
        state.preset = server_preset
        state.update({**PRESETS[server_preset], **server_methods})
        app.run(*(page_shows[name] for name in QSMWebApp.RUN_FIELDS))   # no input loaded: stops after the settings
        assert state.status_text.startswith("No input"), state.status_text
        return state.preset, (state.unwrap, state.bgremove, state.inversion)

    assert click_run("fast") == ("fast", fast)                  # the server had already switched
    assert click_run("consensus") == ("fast", fast)             # the preset's change was still on its way
    chosen = click_run("fast", inversion="medi")                # a method chosen after the preset stays
    assert chosen == ("fast", fast[:2] + ("medi",))
