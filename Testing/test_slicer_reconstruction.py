"""QSM Reconstruction Logic and the shared Slicer glue, on real MRML nodes from slicer-core."""

import inspect
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import slicer_support  # noqa: F401  (stand-ins for the Qt side, module paths)
import slicer
import slicer.util
import vtk

from qsmlib import Cancelled, QSMInputError
from qsmlib.dipole import b0_direction_from_affine
from qsmlib.simulation import load_head_phantom, simulate_gre
from qsmlib.workflow import accuracy_metrics
from qsmslicer import display, echo_times, nodes
from qsmslicer.progress import ProgressAdapter, run_with_progress_dialog
import QSMReconstruction
from QSMReconstruction import QSMReconstructionLogic

#: The issue's bound on deep grey matter means after whole-brain referencing (ppm).
DGM_TOLERANCE_PPM = 0.03


@pytest.fixture
def scene():
    return slicer_support.SceneLogics().scene


@pytest.fixture(scope="module")
def tissues():
    return load_head_phantom(2.0).tissues


@pytest.fixture(scope="module")
def axial_run():
    """The 2 mm simulated head, as echo sequences indexed by EchoTime (ms), reconstructed."""
    scene = slicer_support.SceneLogics().scene
    logic = QSMReconstructionLogic()
    magnitude, phase, truth = logic.addSimulatedHead(scene, voxel_size_mm=2.0, as_sequence=True)
    outputs = logic.process(magnitude, phase, b0_t=truth.b0_t)  # echo times from the sequence index
    return scene, magnitude, phase, truth, outputs


def _oblique_affine(angle_deg, axis):
    """Rotation of world space by ``angle_deg`` about ``axis`` as a 4x4 matrix."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(4)
    rotation[:3, :3] = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    return rotation


def test_array_order_and_ijk_to_ras_round_trip(scene):
    rng = np.random.default_rng(1)
    array = rng.standard_normal((7, 5, 3)).astype(np.float32)  # (i, j, k)
    affine = _oblique_affine(25, (1, 2, 0.5)) @ np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    node = nodes.output_volume(scene, "ijk", array, affine)
    # Slicer stores (k, j, i): voxel (i, j, k) = (6, 1, 2) is at [2, 1, 6]
    assert slicer.util.arrayFromVolume(node)[2, 1, 6] == array[6, 1, 2]
    assert node.GetImageData().GetDimensions() == (7, 5, 3)
    np.testing.assert_array_equal(nodes.array_from_volume(node), array)
    np.testing.assert_allclose(nodes.ijk_to_ras(node), affine, atol=1e-12)
    # the RAS position of a voxel is affine @ (i, j, k, 1), as in NIfTI
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    np.testing.assert_allclose(matrix.MultiplyPoint((6, 1, 2, 1)), affine @ [6, 1, 2, 1])
    np.testing.assert_allclose(nodes.voxel_size(node), (0.8, 0.9, 2.5), rtol=1e-12)
    np.testing.assert_allclose(nodes.b0_direction(node), b0_direction_from_affine(affine))
    # an axial volume has B0 along k
    axial = nodes.output_volume(scene, "axial", array, np.diag([1.0, 1.0, 2.0, 1.0]))
    np.testing.assert_allclose(nodes.b0_direction(axial), (0, 0, 1))


def test_masks_from_labelmap_and_segmentation(scene):
    reference = nodes.output_volume(scene, "ref", np.zeros((12, 10, 8), np.float32), np.diag([1.5, 1.5, 2.0, 1]))
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[2:6, 3:7, 1:4] = 1
    labels[7:10, 1:4, 4:7] = 2
    labelmap = nodes.output_volume(scene, "labels", labels, nodes.ijk_to_ras(reference),
                                   class_name="vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(nodes.mask_from_node(labelmap, reference), labels > 0)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    ids = nodes.segment_ids(segmentation)
    assert len(ids) == 2
    np.testing.assert_array_equal(nodes.mask_from_node(segmentation, reference), labels > 0)
    np.testing.assert_array_equal(nodes.mask_from_node(segmentation, reference, [ids[1]]), labels == 2)
    shifted = nodes.output_volume(scene, "shifted", labels, np.diag([1.5, 1.5, 2.5, 1]),
                                  class_name="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(QSMInputError, match="same voxels"):
        nodes.mask_from_node(shifted, reference)


def test_echo_times_from_sequence_multivolume_and_dicom(scene):
    volumes = [nodes.output_volume(scene, f"e{n}", np.full((4, 4, 4), n, np.float32), np.eye(4)) for n in range(3)]
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "echoes")
    sequence.SetIndexName("EchoTime")
    sequence.SetIndexUnit("ms")
    for volume, te_ms in zip(volumes, ("4", "12.5", "21")):
        sequence.SetDataNodeAtValue(volume, te_ms)
    logic = QSMReconstructionLogic()
    assert logic.echoTimes(sequence) == pytest.approx([0.004, 0.0125, 0.021])
    array, first = nodes.echo_series_array(sequence, "magnitude")
    assert array.shape == (4, 4, 4, 3) and np.all(array[..., 2] == 2)
    # a multi-volume (here a real vector volume) with the MultiVolume importer's attributes
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "mv")
    stacked = np.stack([np.full((5, 4, 3), n, np.float32) for n in range(3)], axis=-1)  # (i, j, k, echo)
    slicer.util.updateVolumeFromArray(vector, np.ascontiguousarray(stacked.transpose(2, 1, 0, 3)))
    vector.SetAttribute("MultiVolume.FrameIdentifyingDICOMTagName", "EchoTime")
    vector.SetAttribute("MultiVolume.FrameLabels", "5.0,10.0,15.0")
    vector.SetAttribute("MultiVolume.FrameIdentifyingDICOMTagUnits", "ms")
    assert logic.echoTimes(vector) == pytest.approx([0.005, 0.010, 0.015])
    array, _ = nodes.echo_series_array(vector, "magnitude")
    np.testing.assert_array_equal(array, stacked)
    # volumes from the DICOM module: EchoTime (ms) and field strength (T) from the database
    tags = {("1.2.3", echo_times.ECHO_TIME_TAG): "7.5", ("1.2.4", echo_times.ECHO_TIME_TAG): "15",
            ("1.2.3", echo_times.FIELD_STRENGTH_TAG): "2.89"}
    volumes[0].SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.9")
    volumes[1].SetAttribute("DICOM.instanceUIDs", "1.2.4")
    lookup = lambda uid, tag: tags.get((uid, tag), "")  # noqa: E731
    assert logic.echoTimes(volumes[:2], lookup) == pytest.approx([0.0075, 0.015])
    assert echo_times.field_strength_t(volumes[:2], lookup) == pytest.approx(2.89)
    assert logic.echoTimes(volumes, lookup) is None  # the third volume has no DICOM UIDs


def test_reconstruction_recovers_deep_grey_matter_on_the_input_geometry(axial_run, tissues):
    scene, magnitude, phase, truth, outputs = axial_run
    first_echo = magnitude.GetNthDataNode(0)
    for node in (outputs.susceptibility, outputs.local_field, outputs.total_field, outputs.mask):
        np.testing.assert_array_equal(nodes.ijk_to_ras(node), nodes.ijk_to_ras(first_echo))
        np.testing.assert_array_equal(nodes.ijk_to_ras(node), truth.affine)
        assert node.GetScene() is scene
    chi = nodes.array_from_volume(outputs.susceptibility)
    mask = nodes.array_from_volume(outputs.mask) > 0
    assert chi.shape == truth.chi_ppm.shape and chi.dtype == np.float32
    metrics = accuracy_metrics(chi, truth.chi_ppm, mask & truth.brain_mask, truth.labels, tissues)
    assert len(metrics["dgm_error_ppm"]) == 7
    assert metrics["dgm_max_abs_error_ppm"] < DGM_TOLERANCE_PPM, metrics["dgm_error_ppm"]
    # whole-brain referencing: mean 0 over the output mask
    assert abs(chi[mask].mean()) < 1e-5
    assert outputs.mask.IsA("vtkMRMLLabelMapVolumeNode")
    assert outputs.susceptibility.GetName() == "SimulatedHead_Magnitude_QSM"
    assert outputs.susceptibility.GetVoxelValueUnits().GetCodeValue() == "[ppm]"
    assert outputs.local_field.GetVoxelValueUnits().GetCodeValue() == "Hz"
    provenance = json.loads(outputs.susceptibility.GetAttribute("QSM.Provenance"))
    assert provenance["inputs"]["echo_times_s"] == pytest.approx(list(truth.te_s))
    assert provenance["inputs"]["echo_times_source"] == "DICOM attributes"
    assert provenance["detected"]["b0_dir"] == pytest.approx([0, 0, 1])
    assert provenance["checks"]["phase_sign"]["ok"]
    # display: diverging colours centred on 0 ppm, window -0.15..+0.15 ppm
    shown = outputs.susceptibility.GetDisplayNode()
    assert shown.GetWindow() == pytest.approx(0.30) and shown.GetLevel() == pytest.approx(0.0)
    assert not shown.GetAutoWindowLevel()
    colors = shown.GetColorNode()
    assert colors.GetAttribute(display.DIVERGING_ATTRIBUTE) == "1"
    low, mid, high = (colors.GetLookupTable().GetTableValue(i) for i in (0, 128, 255))
    assert low[2] == 1.0 and low[0] == 0.0 and high[0] == 1.0 and high[2] == 0.0
    assert min(mid[:3]) > 0.99  # white at 0 ppm


def test_rotation_about_b0_gives_the_same_map(axial_run):
    """An oblique IJKToRAS that keeps B0 in voxel coordinates: same voxels, same map."""
    scene, magnitude, phase, truth, outputs = axial_run
    rotated = _oblique_affine(30, (0, 0, 1)) @ truth.affine
    assert not np.allclose(rotated[:3, :3], np.diag(np.diag(rotated[:3, :3])))  # really oblique
    mag = [nodes.output_volume(scene, f"rot_mag_e{e}", truth.magnitude[..., e], rotated) for e in range(5)]
    pha = [nodes.output_volume(scene, f"rot_pha_e{e}", truth.phase[..., e], rotated) for e in range(5)]
    again = QSMReconstructionLogic().process(mag, pha, te_s=list(truth.te_s), b0_t=truth.b0_t)
    np.testing.assert_allclose(nodes.ijk_to_ras(again.susceptibility), rotated, atol=1e-9)
    np.testing.assert_allclose(nodes.array_from_volume(again.susceptibility),
                               nodes.array_from_volume(outputs.susceptibility), atol=1e-5)
    assert again.susceptibility.GetName() == "rot_mag_QSM"


def test_tilted_acquisition_uses_b0_from_ijk_to_ras(tissues):
    """Oblique slices tilt B0 in voxel coordinates (here by 11.5 degrees); the Logic must use it."""
    context = slicer_support.SceneLogics()
    scene = context.scene
    b0_dir = np.array([0.0, 0.2, 0.98])
    b0_dir /= np.linalg.norm(b0_dir)
    logic = QSMReconstructionLogic()
    magnitude, phase, truth = logic.addSimulatedHead(scene, voxel_size_mm=2.0, b0_dir=tuple(b0_dir), seed=4)
    assert abs(np.dot(nodes.b0_direction(magnitude[0]), b0_dir)) == pytest.approx(1.0)
    outputs = logic.process(magnitude, phase, te_s=list(truth.te_s), b0_t=truth.b0_t)
    np.testing.assert_array_equal(nodes.ijk_to_ras(outputs.susceptibility), truth.affine)
    chi = nodes.array_from_volume(outputs.susceptibility)
    mask = nodes.array_from_volume(outputs.mask) > 0
    right = accuracy_metrics(chi, truth.chi_ppm, mask & truth.brain_mask, truth.labels, tissues)
    assert right["dgm_max_abs_error_ppm"] < DGM_TOLERANCE_PPM, right["dgm_error_ppm"]
    provenance = json.loads(outputs.susceptibility.GetAttribute("QSM.Provenance"))
    assert provenance["detected"]["b0_dir"] == pytest.approx(list(b0_dir))
    # the same voxels labelled axial (B0 assumed along k) give a worse map
    axial = np.diag([2.0, 2.0, 2.0, 1.0])
    axial[:3, 3] = truth.affine[:3, 3]
    mag = [nodes.output_volume(scene, f"ax_mag_e{e}", truth.magnitude[..., e], axial) for e in range(5)]
    pha = [nodes.output_volume(scene, f"ax_pha_e{e}", truth.phase[..., e], axial) for e in range(5)]
    wrong_out = logic.process(mag, pha, te_s=list(truth.te_s), b0_t=truth.b0_t)
    wrong_mask = nodes.array_from_volume(wrong_out.mask) > 0
    wrong = accuracy_metrics(nodes.array_from_volume(wrong_out.susceptibility), truth.chi_ppm,
                             wrong_mask & truth.brain_mask, truth.labels, tissues)
    assert right["dgm_mean_abs_error_ppm"] < 0.8 * wrong["dgm_mean_abs_error_ppm"], (right, wrong)


def test_bad_inputs_and_cancel_leave_the_scene_unchanged(axial_run):
    scene, magnitude, phase, truth, _outputs = axial_run
    logic = QSMReconstructionLogic()
    before = scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
    with pytest.raises(QSMInputError, match="milliseconds|ms"):
        logic.process(magnitude, phase, te_s=[4, 10, 16, 22, 28], b0_t=3.0)
    with pytest.raises(QSMInputError, match="preset"):
        logic.process(magnitude, phase, b0_t=3.0, preset="best")
    seen = []
    adapter = ProgressAdapter(report=lambda text, percent: seen.append(percent),
                              is_cancelled=lambda: len(seen) >= 3)
    with pytest.raises(Cancelled):
        logic.process(magnitude, phase, b0_t=3.0, progress=adapter)
    assert seen == sorted(seen) and len(seen) == 3
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == before


class _RecordingDialog:
    """Stands in for the QProgressDialog of slicer.util.createProgressDialog; the user clicks Cancel
    after ``cancel_after`` updates."""

    def __init__(self, cancel_after=None, **kwargs):
        self.created_with, self.cancel_after = kwargs, cancel_after
        self.values, self.labels, self.closed = [], [], False

    @property
    def value(self):
        return self.values[-1] if self.values else 0

    @value.setter
    def value(self, percent):
        self.values.append(percent)

    @property
    def labelText(self):
        return self.labels[-1] if self.labels else ""

    @labelText.setter
    def labelText(self, text):
        self.labels.append(text)

    @property
    def wasCanceled(self):
        return self.cancel_after is not None and len(self.values) >= self.cancel_after

    def close(self):
        self.closed = True


def test_progress_dialog_shows_each_stage_and_cancel_stops_the_run(axial_run):
    scene, magnitude, phase, truth, _outputs = axial_run
    logic = QSMReconstructionLogic()
    before = scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
    dialogs, events = [], []

    def create_dialog(**kwargs):
        dialogs.append(_RecordingDialog(cancel_after=4, **kwargs))
        return dialogs[-1]

    result, cancelled = run_with_progress_dialog(
        lambda progress: logic.process(magnitude, phase, te_s=list(truth.te_s), b0_t=3.0, progress=progress),
        title="QSM reconstruction", create_dialog=create_dialog, process_events=lambda: events.append(1))
    dialog = dialogs[0]
    assert (result, cancelled) == (None, True)
    assert dialog.closed and dialog.created_with["maximum"] == 100
    assert len(dialog.values) == 4 and dialog.values == sorted(dialog.values) and len(events) == 4
    assert dialog.labels[0] == "Mask..."
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == before

    dialogs.clear()
    outputs, cancelled = run_with_progress_dialog(
        lambda progress: logic.process(magnitude, phase, te_s=list(truth.te_s), b0_t=3.0, progress=progress,
                                       preset="fast"),
        title="QSM reconstruction", create_dialog=lambda **kw: dialogs.append(_RecordingDialog(**kw)) or dialogs[-1])
    assert not cancelled and outputs.susceptibility is not None
    assert dialogs[0].values[-1] == 100 and dialogs[0].closed
    assert {"Total field...", "Background removal...", "Dipole inversion..."} <= set(dialogs[0].labels)


def test_progress_adapter_weights_stages():
    seen = []
    adapter = ProgressAdapter(report=lambda text, percent: seen.append((text, percent)))
    for stage in ("mask", "total field", "background removal", "dipole inversion", "referencing"):
        adapter(stage, 0.0)
        adapter(stage, 1.0)
    assert seen[0] == ("Mask...", 0) and seen[-1] == ("Referencing...", 100)
    assert seen[3][1] == 35  # mask 5 % + total field 30 %
    adapter.cancel()
    with pytest.raises(Cancelled):
        adapter("dipole inversion", 0.5)


def test_csf_reference_from_the_module_shifts_the_map_by_the_ventricle_mean(axial_run):
    scene, magnitude, phase, truth, outputs = axial_run
    csf = QSMReconstructionLogic().process(magnitude, phase, b0_t=truth.b0_t, reference="csf")
    record = csf.provenance["stages"][-1]
    assert record["method"] == "csf" and record["csf_volume_ml"] > 5
    brain = nodes.array_from_volume(outputs.susceptibility)
    by_csf = nodes.array_from_volume(csf.susceptibility)
    inside = nodes.array_from_volume(outputs.mask) > 0
    shift = (brain - by_csf)[inside]
    assert np.ptp(shift) < 1e-5
    assert shift[0] == pytest.approx(record["offset_ppm"] - outputs.provenance["stages"][-1]["offset_ppm"], abs=1e-5)


def test_echo_time_text_round_trips_and_refuses_non_numbers():
    te = [0.004, 0.0105, 0.017]
    assert echo_times.format_seconds(te) == "0.004, 0.0105, 0.017"
    assert echo_times.parse_seconds(echo_times.format_seconds(te)) == te
    assert echo_times.parse_seconds("0.004;0.008  0.012") == [0.004, 0.008, 0.012]
    assert echo_times.parse_seconds("  ") == []
    with pytest.raises(QSMInputError, match="'4 ms, 8 ms' is not a list of numbers"):
        echo_times.parse_seconds("4 ms, 8 ms")


# --- chi-separation: iron and myelin maps beside the susceptibility (issue 14) -----------------------

#: The issue's bound on each deep grey matter part with a measured R2 (ppm); measured on this head
#: (2 mm, seed 2, true mask, T2 map given in s): worst 0.014 ppm (substantia nigra chi_pos), 51 iterations.
SEPARATION_TOLERANCE_PPM = 0.02
SEPARATION_NUCLEI = ("caudate", "GP", "Putamen", "RN", "DN", "SNandSTN", "Thalamus")


@pytest.fixture(scope="module")
def separation_run():
    """The 2 mm head with chi-separation truth (seed 2) as echo volumes, a T2 map (s), and the run with separation."""
    from qsmlib.simulation.separation import simulate_separation_gre

    context = slicer_support.SceneLogics()
    scene = context.scene
    phantom = load_head_phantom(2.0)
    sim = simulate_separation_gre(phantom, snr=100, seed=2)
    affine = sim.affine
    echoes = range(sim.magnitude.shape[3])
    magnitude = [nodes.output_volume(scene, f"sep_mag_e{e + 1}", sim.magnitude[..., e], affine) for e in echoes]
    phase = [nodes.output_volume(scene, f"sep_pha_e{e + 1}", sim.phase[..., e], affine) for e in echoes]
    brain = nodes.output_volume(scene, "brain", sim.brain_mask.astype(np.uint8), affine,
                                class_name="vtkMRMLLabelMapVolumeNode")
    r2 = np.where(sim.brain_mask, sim.r2_hz, 0).astype(np.float32)
    t2 = nodes.output_volume(scene, "T2map", np.divide(1.0, r2, out=np.zeros_like(r2), where=r2 > 0), affine)
    before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    outputs = QSMReconstructionLogic().process(magnitude, phase, te_s=list(sim.te_s), b0_t=sim.b0_t, mask=brain,
                                               separation=True, r2=t2, r2_unit="T2")
    return scene, sim, phantom, (magnitude, phase, brain, t2), outputs, before


def test_separation_writes_both_maps_and_r2prime_beside_the_susceptibility(separation_run):
    scene, sim, _phantom, _inputs, outputs, before = separation_run
    chi_pos, chi_neg, r2prime = outputs.chi_pos, outputs.chi_neg, outputs.r2prime
    # 4 outputs of the reconstruction (the mask is a labelmap, also a scalar volume) and 3 of the separation
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == before + 4 + 3
    assert [n.GetName() for n in (chi_pos, chi_neg, r2prime)] == ["sep_mag_ChiPos", "sep_mag_ChiNeg",
                                                                  "sep_mag_R2Prime"]
    for node in (chi_pos, chi_neg, r2prime):
        np.testing.assert_array_equal(nodes.ijk_to_ras(node), sim.affine)
        assert node.GetScene() is scene
        provenance = json.loads(node.GetAttribute("QSM.Provenance"))
        assert provenance["separation"]["r2_source"] == "T2 map T2map"
        assert provenance["inputs"]["r2"] == {"node": "T2map", "unit": "T2"}
        assert provenance["units"]["chi_pos"] == "ppm" and provenance["units"]["r2prime"] == "1/s"
    assert json.loads(outputs.susceptibility.GetAttribute("QSM.Provenance"))["separation"]["converged"]
    for node in (chi_pos, chi_neg):
        assert node.GetVoxelValueUnits().GetCodeValue() == "[ppm]"
        shown = node.GetDisplayNode()
        assert shown.GetWindow() == pytest.approx(0.30) and shown.GetLevel() == pytest.approx(0.0)
        assert shown.GetColorNode().GetAttribute(display.DIVERGING_ATTRIBUTE) == "1"
    assert r2prime.GetVoxelValueUnits().GetCodeValue() == "/s"
    pos, neg = nodes.array_from_volume(chi_pos), nodes.array_from_volume(chi_neg)
    mask = nodes.array_from_volume(outputs.mask) > 0
    assert pos.min() >= 0 and neg.max() <= 0 and not pos[~mask].any() and not neg[~mask].any()
    # R2' = R2* - R2 with the given T2: the truth's R2' within the echo fit's noise in the brain
    r2prime_error = np.abs(nodes.array_from_volume(r2prime) - sim.r2prime_hz)[mask]
    assert np.median(r2prime_error) < 1.0, np.median(r2prime_error)  # measured 0.45 1/s


def test_separation_per_segment_table_matches_the_truth(separation_run):
    """The parts' means per deep grey matter segment, through ROI Susceptibility's table, against the truth."""
    from ROISusceptibility import ROISusceptibilityLogic

    scene, sim, phantom, _inputs, outputs, _before = separation_run
    mask = nodes.array_from_volume(outputs.mask) > 0
    label = {tissue.name: key for key, tissue in phantom.tissues.items()}
    regions = np.zeros(sim.labels.shape, np.uint8)
    for number, name in enumerate(SEPARATION_NUCLEI + ("WM",), start=1):
        regions[(sim.labels == label[name]) & mask] = number
    labelmap = nodes.output_volume(scene, "nuclei", regions, sim.affine, class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nuclei")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    table = ROISusceptibilityLogic().computeStatistics(outputs.susceptibility, segmentation, reference="brain",
                                                       brain_mask=outputs.mask, chi_pos=outputs.chi_pos,
                                                       chi_neg=outputs.chi_neg)
    rows = table.GetTable()
    assert rows.GetNumberOfRows() == len(SEPARATION_NUCLEI) + 1
    pos, neg = nodes.array_from_volume(outputs.chi_pos), nodes.array_from_volume(outputs.chi_neg)
    errors = {}
    for row, name in enumerate(SEPARATION_NUCLEI + ("WM",)):
        inside = regions == row + 1
        table_pos = rows.GetValueByName(row, "Mean chi_pos").ToDouble()
        table_neg = rows.GetValueByName(row, "Mean chi_neg").ToDouble()
        # the table holds the maps' own means (not referenced) ...
        assert table_pos == pytest.approx(pos[inside].astype(np.float64).mean(), abs=1e-7)
        assert table_neg == pytest.approx(neg[inside].astype(np.float64).mean(), abs=1e-7)
        # ... which are the truth's within the bound
        errors[name] = (table_pos - float(sim.chi_pos_ppm[inside].mean()),
                        table_neg - float(sim.chi_neg_ppm[inside].mean()))
        if name in ("GP", "SNandSTN", "DN"):
            assert table_pos > 3 * -table_neg, (name, table_pos, table_neg)  # positive-dominated
    print({name: (round(p, 4), round(n, 4)) for name, (p, n) in errors.items()})
    worst = max(max(abs(p), abs(n)) for name, (p, n) in errors.items() if name != "WM")
    assert worst < SEPARATION_TOLERANCE_PPM, errors
    white = len(SEPARATION_NUCLEI)
    assert rows.GetValueByName(white, "Mean chi_pos").ToDouble() + rows.GetValueByName(
        white, "Mean chi_neg").ToDouble() < -0.01  # white matter negative


def test_separation_refuses_bad_r2_maps_before_the_run_and_cancel_adds_nothing(separation_run):
    scene, sim, _phantom, (magnitude, phase, brain, t2), _outputs, _before = separation_run
    logic = QSMReconstructionLogic()
    before = scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
    t2_ms = nodes.output_volume(scene, "T2ms", nodes.array_from_volume(t2) * 1000, sim.affine)
    common = dict(te_s=list(sim.te_s), b0_t=sim.b0_t, mask=brain, separation=True)
    with pytest.raises(QSMInputError, match="looks like milliseconds"):
        logic.process(magnitude, phase, r2=t2_ms, r2_unit="T2", **common)
    with pytest.raises(QSMInputError, match="looks like a T2 map"):
        logic.process(magnitude, phase, r2=t2, r2_unit="R2", **common)
    shifted = nodes.output_volume(scene, "shifted", nodes.array_from_volume(t2), sim.affine @ np.diag([1, 1, 1.5, 1]))
    with pytest.raises(QSMInputError, match="same voxels"):
        logic.process(magnitude, phase, r2=shifted, r2_unit="T2", **common)
    with pytest.raises(QSMInputError, match="separation is not switched on"):
        logic.process(magnitude, phase, te_s=list(sim.te_s), b0_t=sim.b0_t, options={"separation": {"lam": 1e-4}})
    with pytest.raises(QSMInputError, match="has no option"):
        logic.process(magnitude, phase, preset="fast", options={"separation": {"lambda": 1e-4}}, **common)
    for node in (t2_ms, shifted):
        scene.RemoveNode(node.GetDisplayNode())
        scene.RemoveNode(node)
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == before
    # Cancel while the separation iterates: nothing is written
    from qsmslicer.progress import SEPARATION_STAGE_WEIGHTS

    seen = []
    adapter = ProgressAdapter(report=lambda text, percent: seen.append((text, percent)),
                              is_cancelled=lambda: len([s for s in seen if s[0] == "Chi-separation..."]) >= 3,
                              weights=SEPARATION_STAGE_WEIGHTS)
    with pytest.raises(Cancelled, match="chi-separation"):
        logic.process(magnitude, phase, preset="fast", progress=adapter, **common)
    percents = [p for _text, p in seen]
    assert percents == sorted(percents) and 50 < percents[-1] < 100  # the reconstruction is 1 / 1.5 of the bar
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == before
