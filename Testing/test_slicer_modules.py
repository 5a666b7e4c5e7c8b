"""The three modules as a Slicer user meets them: panels, bindings, presets, sample data, Apply, self-tests.

These run in the fast suite on slicer-core MRML with the fake Qt and the strict
stand-ins of Slicer's Python layer, and in ``make slicer-check`` on Slicer's own
``parameterNodeWrapper``, ``ScriptedLoadableModule``, ``SampleData``, ``i18n`` and
``slicer.util`` of every supported release (see slicer_support).
"""

import collections.abc
import csv
import importlib
import sys
import unittest

import numpy as np
import pytest

import slicer_support
import fake_qt
import slicer

from qsmlib.pipeline import PRESETS
from qsmslicer import dependencies, echo_times, nodes, sample_data


@pytest.fixture
def context():
    slicer.app._fake_testing = False
    return slicer_support.SceneLogics()


@pytest.fixture
def reconstruction(context):
    module = slicer_support.LoadedModule("QSMReconstruction")
    module.open_panel()
    yield module
    module.unload()


def _scene_node_ids(scene):
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


# --- every panel opens, binds and validates -----------------------------------------------------

@pytest.mark.parametrize("name, reason", [("QSMReconstruction", "Select the magnitude echoes"),
                                          ("SWI", "Select the magnitude echoes"),
                                          ("ROISusceptibility", "Select a susceptibility volume")])
def test_each_panel_opens_binds_its_parameters_and_explains_why_apply_is_disabled(context, name, reason):
    module = slicer_support.LoadedModule(name)
    widget = module.open_panel()
    assert fake_qt.QUiLoader.unknown_properties == []
    assert widget.ui.applyButton.enabled is False
    assert widget.ui.applyButton.toolTip == reason and widget.ui.statusLabel.text == reason
    bound = {w.property("SlicerParameterName"): w for w in vars(widget.ui).values()
             if w.property("SlicerParameterName")}
    assert set(bound) <= set(type(widget._parameterNode).allParameters)
    # every node selector lists the annotation's concrete classes (Slicer replaces the .ui's nodeTypes)
    for parameter, selector in bound.items():
        if type(selector) is slicer.qMRMLNodeComboBox:
            annotation = type(widget._parameterNode).allParameters[parameter]
            assert selector.nodeTypes and "vtkMRMLNode" not in selector.nodeTypes, parameter
            assert annotation is not None
    # a change in the GUI reaches the parameter node, and a change there reaches the GUI
    if name != "ROISusceptibility":
        widget.ui.echoTimesLineEdit.type_text("0.004, 0.008")
        assert widget._parameterNode.echoTimesS == "0.004, 0.008"
        widget._parameterNode.echoTimesS = "0.005"
        assert widget.ui.echoTimesLineEdit.text == "0.005"
    module.exit()
    module.unload()


def test_spin_boxes_show_the_parameter_and_clamp_to_its_range(context, reconstruction):
    widget = reconstruction.widget
    box = widget.ui.fieldStrengthSpinBox
    assert box.value == 3.0 and (box.minimum, box.maximum) == (0.1, 21.1)  # WithinRange of the parameter
    box.value = 7.0
    assert widget._parameterNode.fieldStrengthT == 7.0
    box.value = 50.0  # typed beyond the range: clamped, as Qt does
    assert widget._parameterNode.fieldStrengthT == 21.1


def test_leaving_the_module_disconnects_the_gui_and_coming_back_reconnects_once(context, reconstruction):
    widget, parameters = reconstruction.widget, reconstruction.widget._parameterNode
    reconstruction.exit()
    widget.ui.echoTimesLineEdit.type_text("0.001")  # a stale binding would write this into the node
    assert parameters.echoTimesS == ""
    reconstruction.enter()
    assert widget.ui.echoTimesLineEdit.text == ""
    widget.ui.echoTimesLineEdit.type_text("0.004")
    assert parameters.echoTimesS == "0.004"
    for _ in range(3):
        reconstruction.exit()
        reconstruction.enter()
    parameters.echoTimesS = "0.006"  # only one live binding: the node keeps what was set
    assert widget.ui.echoTimesLineEdit.text == "0.006" and parameters.echoTimesS == "0.006"


def test_choosing_a_preset_sets_the_stages_and_reconnecting_keeps_the_users_choices(context, reconstruction):
    widget = reconstruction.widget
    parameters = widget._parameterNode
    widget.ui.presetComboBox.setCurrentText("fast")
    assert (parameters.unwrap, parameters.bgremove, parameters.inversion) == tuple(
        PRESETS["fast"][stage] for stage in ("unwrap", "bgremove", "inversion"))
    widget.ui.inversionComboBox.setCurrentText("medi")
    widget.ui.bgremoveComboBox.setCurrentText("lbv")
    for _ in range(2):  # module left and entered again: the combo boxes are filled again
        reconstruction.exit()
        reconstruction.enter()
    context.scene.Clear(0)  # File > Close scene while the module is shown
    parameters = widget._parameterNode
    assert parameters.preset == "consensus"  # a closed scene starts from the defaults
    widget.ui.presetComboBox.setCurrentText("fast")
    widget.ui.inversionComboBox.setCurrentText("medi")
    reconstruction.exit()
    reconstruction.enter()
    assert (parameters.preset, parameters.inversion) == ("fast", "medi")
    assert widget.ui.inversionComboBox.currentText == "medi"
    widget.ui.presetComboBox.setCurrentText("consensus")
    assert parameters.inversion == PRESETS["consensus"]["inversion"]


def test_every_choice_survives_scene_save_and_reload(context, reconstruction, tmp_path):
    widget = reconstruction.widget
    scene = context.scene
    volumes = [nodes.output_volume(scene, f"echo{n}", np.full((4, 4, 4), n, np.float32), np.eye(4))
               for n in range(4)]
    mask = nodes.output_volume(scene, "mask", np.ones((4, 4, 4), np.uint8), np.eye(4),
                               class_name="vtkMRMLLabelMapVolumeNode")
    ui = widget.ui
    ui.magnitudeEchoesSelector.setCheckState(volumes[0], 2)
    ui.magnitudeEchoesSelector.setCheckState(volumes[1], 2)
    ui.phaseEchoesSelector.setCheckState(volumes[2], 2)
    ui.phaseEchoesSelector.setCheckState(volumes[3], 2)
    ui.echoTimesLineEdit.type_text("0.004, 0.008")
    ui.fieldStrengthSpinBox.value = 7.0
    ui.maskSelector.setCurrentNode(mask)
    ui.presetComboBox.setCurrentText("fast")
    ui.unwrapComboBox.setCurrentText("laplacian")
    ui.referenceComboBox.setCurrentText("csf")
    ui.flipPhaseSignCheckBox.checked = True
    ui.optionsLineEdit.type_text("tkd.threshold=0.15")
    chosen = {name: widget._parameterNode.getValue(name) for name in type(widget._parameterNode).allParameters}
    assert chosen["magnitudeEchoes"] == volumes[:2] and chosen["mask"] is mask

    path = tmp_path / "saved.mrb"
    assert scene.WriteToMRB(str(path))
    reconstruction.exit()
    scene.Clear(0)  # File > Close scene, then load the bundle, while another module is shown
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    context.enable_mrb(tmp_path / "cache")
    assert scene.ReadFromMRB(str(path))
    reconstruction.enter()  # QSM Reconstruction shown again
    again = widget._parameterNode
    assert again.parameterNode.GetScene() is scene
    for name, value in chosen.items():
        loaded = again.getValue(name)
        if isinstance(value, collections.abc.Sequence) and not isinstance(value, str):
            assert [n.GetName() for n in loaded] == [n.GetName() for n in value], name
        elif hasattr(value, "GetName"):
            assert loaded.GetName() == value.GetName() and loaded.GetScene() is scene, name
        else:
            assert loaded == value, name
    # and the panel shows them: the checked echoes included
    assert [n.GetName() for n in ui.magnitudeEchoesSelector.checkedNodes()] == ["echo0", "echo1"]
    assert ui.unwrapComboBox.currentText == "laplacian" and ui.flipPhaseSignCheckBox.checked
    assert ui.maskSelector.currentNode().GetName() == "mask"


def _node_of_class(scene, class_name, name):
    """A small node of ``class_name`` with content, so that it is saved and read back with the scene."""
    voxels = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    if class_name in ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode"):
        return nodes.output_volume(scene, name, voxels.astype(np.uint8) % 2, np.eye(4), class_name=class_name)
    if class_name == "vtkMRMLSequenceNode":
        sequence = scene.AddNewNodeByClass(class_name, name)
        volume = nodes.output_volume(scene, f"{name}_item", voxels, np.eye(4))
        sequence.SetDataNodeAtValue(volume, "4")
        scene.RemoveNode(volume.GetDisplayNode())
        scene.RemoveNode(volume)
        return sequence
    if class_name == "vtkMRMLSegmentationNode":
        labelmap = _node_of_class(scene, "vtkMRMLLabelMapVolumeNode", f"{name}_labels")
        segmentation = scene.AddNewNodeByClass(class_name, name)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        return segmentation
    if class_name == "vtkMRMLTableNode":
        table = scene.AddNewNodeByClass(class_name, name)
        table.AddColumn().SetName("values")
        return table
    raise AssertionError(f"no recipe for {class_name}")


@pytest.mark.parametrize("name", ["QSMReconstruction", "SWI", "ROISusceptibility"])
def test_every_bound_widget_choice_round_trips_through_the_saved_scene(context, name, tmp_path):
    module = slicer_support.LoadedModule(name)
    widget = module.open_panel()
    scene = context.scene
    bound = {w.property("SlicerParameterName"): w for w in vars(widget.ui).values()
             if w.property("SlicerParameterName")}
    # a value other than the default for each, chosen through the widget (the preset first: it sets stages)
    for parameter, control in sorted(bound.items(), key=lambda item: item[0] != "preset"):
        kind = type(control).__name__
        if kind == "QComboBox":
            default = str(widget._parameterNode.default(parameter).value)
            control.currentIndex = next(i for i in range(control.count()) if control.itemText(i) != default)
        elif kind == "QCheckBox":
            control.checked = not control.checked
        elif kind == "QLineEdit":
            control.type_text(f"typed {parameter}")
        elif kind in ("QDoubleSpinBox", "QSpinBox"):
            control.value = (control.minimum + control.maximum) / 2
        elif kind == "qMRMLNodeComboBox":
            control.setCurrentNode(_node_of_class(scene, control.nodeTypes[-1], f"chosen {parameter}"))
        elif kind == "ctkDirectoryButton":
            control.directory = str(tmp_path / f"chosen {parameter}")
        else:
            raise AssertionError(f"{parameter}: no way to set a {kind}")
    parameters = widget._parameterNode
    chosen = {p: parameters.getValue(p) for p in bound}
    for parameter, value in chosen.items():
        assert value is not None and value != parameters.default(parameter).value, parameter
    path = tmp_path / "saved.mrb"
    assert scene.WriteToMRB(str(path))
    module.exit()
    scene.Clear(0)
    context.enable_mrb(tmp_path / "cache")
    assert scene.ReadFromMRB(str(path))
    module.enter()
    again = widget._parameterNode
    for parameter, value in chosen.items():
        loaded = again.getValue(parameter)
        if hasattr(value, "GetName"):
            assert loaded is not None and loaded.GetName() == value.GetName(), parameter
            assert bound[parameter].currentNode() is loaded, parameter  # and the panel shows it
        else:
            assert loaded == value, parameter
    module.unload()


def test_echo_lists_follow_the_parameter_node(context, reconstruction):
    widget = reconstruction.widget
    volumes = [nodes.output_volume(context.scene, f"echo{n}", np.zeros((3, 3, 3), np.float32), np.eye(4))
               for n in range(3)]
    widget._parameterNode.magnitudeEchoes = volumes[1:]  # a script sets the inputs
    assert widget.ui.magnitudeEchoesSelector.checkedNodes() == volumes[1:]
    widget.ui.magnitudeEchoesSelector.setCheckState(volumes[2], 0)  # the user unticks one
    assert widget._parameterNode.magnitudeEchoes == volumes[1:2]


# --- sample data and Apply ------------------------------------------------------------------------

def test_sample_head_loads_by_uri_from_sample_data_and_the_button_selects_it(context):
    import SampleData
    from QSMReconstruction import registerSampleData

    registerSampleData()
    registerSampleData()  # a module reload registers no second set
    sources = SampleData.SampleDataLogic.sampleDataSourcesByCategory(sample_data.CATEGORY)
    assert [s.sampleName for s in sources] == list(sample_data.VOXEL_SIZES_MM)
    for source in sources:
        assert all(uri.startswith("file://") for uri in source.uris)
    # scripts and self-tests: Slicer's own downloadSample returns the loaded nodes
    first = SampleData.SampleDataLogic().downloadSample("QSMSimulatedHead2mm")
    assert first.IsA("vtkMRMLSequenceNode") and first.GetScene() is context.scene
    truth = sample_data.simulated_head(2.0)
    assert first.GetNumberOfDataNodes() == 5
    np.testing.assert_allclose(nodes.array_from_volume(first.GetNthDataNode(3)), truth.magnitude[..., 3], atol=1e-6)
    np.testing.assert_allclose(nodes.ijk_to_ras(first.GetNthDataNode(0)), truth.affine, atol=1e-6)

    # the Sample Data button: loaded, browsed together, shown, selected in QSM Reconstruction
    module = slicer_support.LoadedModule("QSMReconstruction")
    widget = module.open_panel()
    source = SampleData.SampleDataLogic().sourceForSampleName("QSMSimulatedHead2mm")
    magnitude, phase = source.customDownloader(source)
    parameters = widget._parameterNode
    assert parameters.magnitudeSeries is magnitude and parameters.phaseSeries is phase
    assert echo_times.parse_seconds(parameters.echoTimesS) == pytest.approx(list(truth.te_s))
    assert widget.ui.applyButton.enabled and widget.ui.statusLabel.text == ""
    assert widget.ui.magnitudeSeriesSelector.currentNode() is magnitude
    browsers = context.scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    playing = [browsers.GetItemAsObject(n) for n in range(browsers.GetNumberOfItems())
               if browsers.GetItemAsObject(n).IsSynchronizedSequenceNode(phase.GetID(), True)]
    assert len(playing) == 1 and playing[0].GetMasterSequenceNode() is magnitude
    shown = nodes.displayable_volume(magnitude)
    assert shown.GetScene() is context.scene  # a proxy node, not a node of the sequence's own scene
    np.testing.assert_allclose(nodes.array_from_volume(shown), truth.magnitude[..., 0], atol=1e-6)
    module.unload()


@pytest.fixture
def sample_in_panel(context):
    """QSM Reconstruction's panel with the 2 mm sample head loaded by its Sample Data button."""
    from QSMReconstruction import loadSimulatedHead, registerSampleData

    registerSampleData()
    module = slicer_support.LoadedModule("QSMReconstruction")
    module.open_panel()
    loadSimulatedHead()
    yield module.widget
    module.unload()


def test_apply_reconstructs_the_sample_head_with_progress_and_records_the_preset(context, sample_in_panel,
                                                                                 monkeypatch):
    widget = sample_in_panel
    widget.ui.presetComboBox.setCurrentText("fast")
    dialogs = []
    real_dialog = slicer.util.createProgressDialog
    monkeypatch.setattr(slicer.util, "createProgressDialog", lambda **kw: dialogs.append(real_dialog(**kw))
                        or dialogs[-1])
    widget.ui.applyButton.click()
    parameters = widget._parameterNode
    chi = parameters.outputSusceptibility
    assert chi is not None and chi.GetScene() is context.scene
    provenance = __import__("json").loads(chi.GetAttribute("QSM.Provenance"))
    assert provenance["inputs"]["preset"] == "fast"
    assert [s["method"] for s in provenance["stages"] if s["stage"] == "dipole inversion"] == ["tkd"]
    assert dialogs and dialogs[0].value == 100 and not dialogs[0].visible
    assert slicer.app.overrideCursorDepth() == 0  # the wait cursor is restored
    truth = sample_data.simulated_head(2.0)
    chi_array = nodes.array_from_volume(chi)
    mask = nodes.array_from_volume(parameters.outputMask) > 0
    label = {tissue.name: key for key, tissue in sample_data.head_tissues(2.0).items()}
    pallidum = np.median(chi_array[mask & (truth.labels == label["GP"])])
    white = np.median(chi_array[mask & (truth.labels == label["WM"])])
    assert pallidum - white > 0.1  # true difference 0.16 ppm; measured 0.13 with the fast preset (TKD)


def test_separation_ticked_in_the_panel_adds_the_parts_and_roi_susceptibility_reports_them(
        context, sample_in_panel, monkeypatch, tmp_path):
    widget = sample_in_panel
    ui = widget.ui
    parameters = widget._parameterNode
    ui.presetComboBox.setCurrentText("fast")
    assert not ui.r2MapSelector.enabled and not ui.r2MapUnitComboBox.enabled  # used by the separation only
    ui.separationCheckBox.checked = True
    assert parameters.separation and ui.r2MapSelector.enabled and ui.r2MapUnitComboBox.enabled
    assert parameters.r2Map is None  # none loaded: the R2*-only method
    dialogs = []
    real_dialog = slicer.util.createProgressDialog
    monkeypatch.setattr(slicer.util, "createProgressDialog", lambda **kw: dialogs.append(real_dialog(**kw))
                        or dialogs[-1])
    ui.applyButton.click()
    chi_pos, chi_neg, r2prime = parameters.outputChiPos, parameters.outputChiNeg, parameters.outputR2Prime
    for node in (chi_pos, chi_neg, r2prime):
        assert node is not None and node.GetScene() is context.scene
    assert ui.outputChiPosSelector.currentNode() is chi_pos and ui.outputR2PrimeSelector.currentNode() is r2prime
    provenance = __import__("json").loads(chi_pos.GetAttribute("QSM.Provenance"))
    assert provenance["separation"]["r2_source"] == "tissue model (R2*-only method)"
    assert provenance["inputs"]["r2"] is None and provenance["inputs"]["preset"] == "fast"
    assert dialogs and dialogs[0].value == 100 and not dialogs[0].visible
    assert slicer.app.overrideCursorDepth() == 0
    # the parts are where the head's iron and myelin are
    truth = sample_data.simulated_head(2.0)
    label = {tissue.name: key for key, tissue in sample_data.head_tissues(2.0).items()}
    mask = nodes.array_from_volume(parameters.outputMask) > 0
    pos, neg = nodes.array_from_volume(chi_pos), nodes.array_from_volume(chi_neg)
    pallidum, white = mask & (truth.labels == label["GP"]), mask & (truth.labels == label["WM"])
    assert pos[pallidum].mean() > 3 * -neg[pallidum].mean()
    assert (pos + neg)[white].mean() < 0

    # ROI Susceptibility with both parts: the table, plot and CSV have them beside the total
    roi = slicer_support.LoadedModule("ROISusceptibility")
    roi_widget = roi.open_panel()
    roi_widget.ui.susceptibilitySelector.setCurrentNode(parameters.outputSusceptibility)
    roi_widget.ui.chiPosSelector.setCurrentNode(chi_pos)
    assert not roi_widget.ui.applyButton.enabled
    assert roi_widget.ui.statusLabel.text == "Select a segmentation, or create the deep grey matter segments"
    regions = (pallidum * 1 + white * 2).astype(np.uint8)
    labelmap = nodes.output_volume(context.scene, "regions", regions, nodes.ijk_to_ras(chi_pos),
                                   class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "regions")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    roi_widget.ui.segmentationSelector.setCurrentNode(segmentation)
    assert roi_widget.ui.statusLabel.text == "Select both chi_pos and chi_neg, or neither"
    roi_widget.ui.chiNegSelector.setCurrentNode(chi_neg)
    assert roi_widget.ui.applyButton.enabled
    roi_widget.ui.applyButton.click()
    table = roi_widget._parameterNode.outputTable
    rows = table.GetTable()
    assert rows.GetValueByName(0, "Mean chi_pos").ToDouble() == pytest.approx(float(pos[pallidum].mean()), abs=1e-6)
    assert rows.GetValueByName(1, "Mean chi_neg").ToDouble() == pytest.approx(float(neg[white].mean()), abs=1e-6)
    fake_qt.QFileDialog.next_save_file_name = str(tmp_path / "parts.csv")
    roi_widget.ui.exportButton.click()
    with open(tmp_path / "parts.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert {"Mean", "Mean chi_pos", "Mean chi_neg"} <= set(written[0])
    assert float(written[0]["Mean chi_pos"]) == pytest.approx(float(pos[pallidum].mean()), abs=1e-6)
    roi.unload()


def test_cancel_in_the_progress_dialog_stops_the_run_and_adds_nothing(context, sample_in_panel, monkeypatch):
    widget = sample_in_panel
    before = _scene_node_ids(context.scene)
    real_dialog = slicer.util.createProgressDialog

    def cancelled_dialog(**kw):
        dialog = real_dialog(**kw)
        dialog.cancel()  # the user presses Cancel as soon as it shows
        return dialog
    monkeypatch.setattr(slicer.util, "createProgressDialog", cancelled_dialog)
    widget.ui.applyButton.click()
    assert widget.ui.statusLabel.text == "Cancelled"
    assert widget._parameterNode.outputSusceptibility is None
    assert _scene_node_ids(context.scene) == before


def test_a_mask_that_fills_the_image_asks_before_use_and_no_stops_the_run(context, sample_in_panel):
    widget = sample_in_panel
    widget.ui.presetComboBox.setCurrentText("fast")
    parameters = widget._parameterNode
    shown = nodes.displayable_volume(parameters.magnitudeSeries)
    ones = nodes.output_volume(context.scene, "everything", np.ones(nodes.dimensions(shown), np.uint8),
                               nodes.ijk_to_ras(shown), class_name="vtkMRMLLabelMapVolumeNode")
    parameters.mask = ones
    before = _scene_node_ids(context.scene)
    fake_qt.ctkMessageBox.shown.clear()
    fake_qt.ctkMessageBox.next_answers[:] = [fake_qt.QMessageBox.No]  # the user declines
    widget.ui.applyButton.click()
    (title, question), = fake_qt.ctkMessageBox.shown
    assert question.startswith("The selected brain mask looks implausible:\n- it covers 100 % of the image")
    assert question.endswith("Use this mask anyway?")
    assert widget.ui.statusLabel.text == "No map was written: the brain mask is implausible"
    assert parameters.outputSusceptibility is None and _scene_node_ids(context.scene) == before
    assert slicer.app.overrideCursorDepth() == 0

    fake_qt.ctkMessageBox.next_answers[:] = [fake_qt.QMessageBox.Yes]  # now the user goes on
    widget.ui.applyButton.click()
    chi = parameters.outputSusceptibility
    assert chi is not None and nodes.array_from_volume(chi).any()
    check = __import__("json").loads(chi.GetAttribute("QSM.Provenance"))["checks"]["mask"]
    assert check["source"] == "given" and check["fills_image"] and check["accepted"] is True
    assert widget.ui.statusLabel.text.startswith("Warning: the given brain mask looks implausible")


def test_roi_statistics_from_the_panel_leave_no_node_behind_and_export_csv(context, tmp_path):
    scene = context.scene
    values = np.zeros((8, 8, 8), np.float32)
    values[1:4, 1:4, 1:4] = 0.1
    values[5:7, 5:7, 5:7] = -0.02
    chi = nodes.output_volume(scene, "chi", values, np.eye(4))
    module = slicer_support.LoadedModule("ROISusceptibility")
    widget = module.open_panel()
    widget.ui.susceptibilitySelector.setCurrentNode(chi)
    widget.ui.createSegmentsButton.click()
    parameters = widget._parameterNode
    segmentation = parameters.segmentation
    assert segmentation is not None and slicer.app._fake_main_window.moduleSelector().selected() == ["SegmentEditor"]
    ids = nodes.segment_ids(segmentation)
    for segment_id, region in ((ids[0], values > 0.05), (ids[1], values < 0)):  # "painted" in the editor
        labelmap = nodes.output_volume(scene, "paint", region.astype(np.uint8), np.eye(4),
                                       class_name="vtkMRMLLabelMapVolumeNode")
        segment_ids = __import__("vtk").vtkStringArray()
        segment_ids.InsertNextValue(segment_id)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation,
                                                                                  segment_ids)
        scene.RemoveNode(labelmap.GetDisplayNode())
        scene.RemoveNode(labelmap)
    widget.ui.referenceComboBox.setCurrentText("segment")
    widget.ui.referenceSegmentSelector.setCurrentSegmentID(ids[1])
    assert parameters.referenceSegmentName == segmentation.GetSegmentation().GetSegment(ids[1]).GetName()
    before = _scene_node_ids(scene)
    widget.ui.applyButton.click()
    table = parameters.outputTable
    added = _scene_node_ids(scene) - before
    kinds = sorted(scene.GetNodeByID(i).GetClassName() for i in added)
    # the table, its SD table, and the chart with its three series: nothing hidden, nothing leaked
    assert kinds == sorted(["vtkMRMLTableNode", "vtkMRMLTableNode", "vtkMRMLPlotChartNode"]
                           + ["vtkMRMLPlotSeriesNode"] * 3)
    rows = table.GetTable()
    assert rows.GetValueByName(0, "Mean").ToDouble() == pytest.approx(0.12, abs=1e-6)
    assert rows.GetValueByName(1, "Mean").ToDouble() == pytest.approx(0.0, abs=1e-6)
    fake_qt.QFileDialog.next_save_file_name = str(tmp_path / "statistics")  # typed without an extension
    widget.ui.exportButton.click()
    with open(tmp_path / "statistics.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert float(written[0]["Mean"]) == pytest.approx(0.12, abs=1e-6) and written[0]["Voxel count"] == "27"
    module.unload()


# --- dependencies ------------------------------------------------------------------------------

def test_missing_packages_are_installed_only_after_asking_and_never_upgrade_slicers_own(
        context, monkeypatch, tmp_path):
    monkeypatch.setattr(dependencies, "EXTRA_PACKAGES", {"qsm_probe_pkg": "qsm-probe-pkg>=1"})
    monkeypatch.syspath_prepend(str(tmp_path))
    installs = []

    def pip(requirements, *args, **kwargs):  # stands for the pip subprocess: "installs" the module
        text = " ".join(requirements) if isinstance(requirements, list) else str(requirements)
        constraints = kwargs.get("constraints") or text.split("-c ", 1)[1].split()[0]
        installs.append((text, open(constraints).read()))
        (tmp_path / "qsm_probe_pkg.py").write_text("VALUE = 1\n")

    packaging = sys.modules.get("slicer.packaging")
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        monkeypatch.setattr(packaging, "pip_install", pip)  # Slicer 5.12+: pip_ensure asks, then installs
    monkeypatch.setattr(slicer.util, "pip_install", pip)
    fake_qt.ctkMessageBox.shown.clear()

    fake_qt.ctkMessageBox.next_answers[:] = [fake_qt.QMessageBox.Cancel]  # the user says no
    with pytest.raises(dependencies.DependencyError, match="qsm-probe-pkg"):
        dependencies.ensure_packages_in_slicer("QSM Reconstruction")
    assert installs == [] and slicer.app.overrideCursorDepth() == 0
    assert any("qsm-probe-pkg" in text or "Python package" in text for _title, text in fake_qt.ctkMessageBox.shown)

    fake_qt.ctkMessageBox.next_answers[:] = [fake_qt.QMessageBox.Ok]  # the user agrees
    assert dependencies.ensure_packages_in_slicer("QSM Reconstruction") == ["qsm-probe-pkg>=1"]
    assert len(installs) == 1 and "qsm-probe-pkg>=1" in installs[0][0]
    assert f"numpy=={np.__version__}" in installs[0][1]  # Slicer's numpy is held where it is
    assert importlib.import_module("qsm_probe_pkg").VALUE == 1
    assert dependencies.ensure_packages_in_slicer("QSM Reconstruction") == []  # nothing asked twice
    assert slicer.app.overrideCursorDepth() == 0


# --- the modules' own self-tests, as Slicer and ctest run them ---------------------------------

@pytest.mark.parametrize("name", ["QSMReconstruction", "SWI", "ROISusceptibility"])
def test_self_test_runs_as_a_unittest_case_and_passes(context, name):
    module = slicer_support.LoadedModule(name)
    test_class = getattr(module.python_module, f"{name}Test")
    assert issubclass(test_class, unittest.TestCase)
    slicer.app._fake_testing = True  # ctest runs Slicer in testing mode
    try:
        module.module.runTest(msec=0)  # what Reload and Test, and slicer_add_python_unittest, call
        suite = unittest.TestLoader().loadTestsFromTestCase(test_class)
        assert suite.countTestCases() >= 1
        result = unittest.TextTestRunner(verbosity=0).run(suite)
        assert result.wasSuccessful(), result.failures + result.errors
    finally:
        slicer.app._fake_testing = False
