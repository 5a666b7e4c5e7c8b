"""ROI Susceptibility's "Segment from atlas" on real MRML nodes: named, coloured segments from a template.

The subject is the head model under a known deformation (10 degrees, 10 % scale,
smooth bumps) at 2 mm; its true labels are the template's carried by that
deformation, so the segments are checked against a known answer.
"""

import numpy as np
import pytest

import slicer_support
import fake_qt
import slicer

from atlas_fixtures import dice, known_warp, other_body_part, warp_volume, warped_phantom
from qsmlib import Cancelled
from qsmlib.atlas import RegistrationFailed, RegistrationOptions, write_head_model_template
from qsmlib.atlas.template import DEEP_GREY_MATTER_SEGMENTS, head_model_images, head_model_segments
from qsmlib.io import save_nifti
from qsmlib.simulation import load_head_phantom, susceptibility_map
from qsmslicer import nodes
from ROISusceptibility import ATLAS_FOLDER_SETTING, ROISusceptibilityLogic

NAMES = [name for name, _rgb in DEEP_GREY_MATTER_SEGMENTS]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The 2 mm head model as a template folder, and a deformed head with its true labels."""
    root = tmp_path_factory.mktemp("slicer-atlas")
    template = write_head_model_template(root / "template", voxel_size_mm=2.0)
    phantom = load_head_phantom(2.0)
    labels, _table, _ = head_model_segments(phantom)
    warp = known_warp(phantom)
    subject = warped_phantom(phantom, warp)
    chi = np.where(subject.brain_mask, susceptibility_map(subject, seed=4), 0).astype(np.float32)
    truth = warp_volume(labels, phantom.affine, warp)
    return {"root": root, "template": template, "chi": chi, "affine": subject.affine, "truth": truth}


@pytest.fixture
def context():
    slicer.app._fake_testing = False
    return slicer_support.SceneLogics()


def _ids(scene):
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def test_segments_from_a_template_on_real_mrml_nodes(context, head):
    scene = context.scene
    volume = nodes.output_volume(scene, "chi", head["chi"], head["affine"])
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "DGM")
    segmentation.CreateDefaultDisplayNodes()
    before = _ids(scene)
    logic = ROISusceptibilityLogic()
    stages = []
    result = logic.segmentFromAtlas(volume, segmentation, head["template"],
                                    progress=lambda stage, fraction: stages.append(stage))
    assert _ids(scene) == before  # the temporary labelmaps are gone
    assert stages[0] == "atlas rigid" and stages[-1] == "atlas labels"
    ids = nodes.segment_ids(segmentation)
    assert ids == result.segment_ids
    segments = [segmentation.GetSegmentation().GetSegment(i) for i in ids]
    assert [s.GetName() for s in segments] == NAMES
    for segment, (_name, rgb) in zip(segments, DEEP_GREY_MATTER_SEGMENTS):
        assert segment.GetColor() == pytest.approx([c / 255 for c in rgb])
    # each segment, exported by Slicer onto the map's voxels, is the nucleus of the known deformation
    dices = []
    for value, segment_id in enumerate(ids, start=1):
        mask = nodes.segment_mask(segmentation, [segment_id], volume)
        dices.append(dice(mask, head["truth"] == value))
    print("Dice per segment:", [round(d, 3) for d in dices])
    assert np.mean(dices) >= 0.8 and min(dices) >= 0.7
    assert "QSMLib head model" in segmentation.GetAttribute("QSM.AtlasTemplate")
    assert "affine determinant" in segmentation.GetAttribute("QSM.AtlasRegistration")
    # the statistics table as today, one row per segment
    table = logic.computeStatistics(volume, segmentation)
    assert table.GetNumberOfRows() == len(NAMES)
    # running again replaces the segments of the same names, and keeps the user's own
    user = segmentation.GetSegmentation().AddEmptySegment("", "My lesion", [1.0, 1.0, 0.0])
    logic.segmentFromAtlas(volume, segmentation, head["template"], options=RegistrationOptions(deformable="none"))
    names = [segmentation.GetSegmentation().GetSegment(i).GetName() for i in nodes.segment_ids(segmentation)]
    assert sorted(names) == sorted(NAMES + ["My lesion"]) and user in nodes.segment_ids(segmentation)


def test_a_failed_registration_changes_nothing(context, head, tmp_path):
    scene = context.scene
    leg, leg_labels = other_body_part(2.0, with_labels=True)
    images = head_model_images(leg)
    folder = tmp_path / "leg"
    folder.mkdir()
    save_nifti(folder / "template_chi.nii.gz", images["susceptibility"], leg.affine)
    save_nifti(folder / "labels.nii.gz", leg_labels, leg.affine, dtype=np.uint8)
    (folder / "labels.tsv").write_text("index\tname\n" + "".join(f"{n}\t{name}\n"
                                                                 for n, name in enumerate(NAMES, start=1)))
    volume = nodes.output_volume(scene, "chi", head["chi"], head["affine"])
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "DGM")
    segmentation.CreateDefaultDisplayNodes()
    before = _ids(scene)
    with pytest.raises(RegistrationFailed, match="atlas registration failed: "):
        ROISusceptibilityLogic().segmentFromAtlas(volume, segmentation, folder)
    assert _ids(scene) == before and nodes.segment_ids(segmentation) == []


def test_panel_remembers_the_folder_shows_progress_and_cancels(context, head, monkeypatch):
    scene = context.scene
    fake_qt.QSettings().remove(ATLAS_FOLDER_SETTING)
    volume = nodes.output_volume(scene, "chi", head["chi"], head["affine"])
    module = slicer_support.LoadedModule("ROISusceptibility")
    widget = module.open_panel()
    ui, parameters = widget.ui, widget._parameterNode
    ui.susceptibilitySelector.setCurrentNode(volume)
    assert not ui.segmentFromAtlasButton.enabled
    assert ui.segmentFromAtlasButton.toolTip == "Choose the atlas template folder"
    ui.atlasFolderButton.directory = str(head["root"] / "nowhere")
    assert not ui.segmentFromAtlasButton.enabled and "does not exist" in ui.segmentFromAtlasButton.toolTip
    ui.atlasFolderButton.directory = head["template"]  # the user picks the folder
    assert str(parameters.atlasFolder) == head["template"] and ui.segmentFromAtlasButton.enabled

    # Cancel as soon as the dialog shows: nothing is added
    real_dialog = slicer.util.createProgressDialog

    def cancelled_dialog(**kw):
        dialog = real_dialog(**kw)
        dialog.cancel()
        return dialog
    monkeypatch.setattr(slicer.util, "createProgressDialog", cancelled_dialog)
    ui.segmentFromAtlasButton.click()
    assert ui.statusLabel.text == "Cancelled"
    assert nodes.segment_ids(parameters.segmentation) == []
    monkeypatch.setattr(slicer.util, "createProgressDialog", real_dialog)

    # a run fills the segmentation; the panel says what it found
    ui.segmentFromAtlasButton.click()
    assert [parameters.segmentation.GetSegmentation().GetSegment(i).GetName()
            for i in nodes.segment_ids(parameters.segmentation)] == NAMES
    assert ui.statusLabel.text.startswith("11 segments from the atlas; affine determinant")
    module.unload()

    # the folder is remembered: a new scene's panel starts with it
    assert fake_qt.QSettings().value(ATLAS_FOLDER_SETTING) == head["template"]
    other = slicer_support.SceneLogics()
    again = slicer_support.LoadedModule("ROISusceptibility")
    widget = again.open_panel()
    assert str(widget._parameterNode.atlasFolder) == head["template"]
    assert widget.ui.atlasFolderButton.directory == head["template"]
    again.unload()
    assert other.scene is slicer.mrmlScene
    fake_qt.QSettings().remove(ATLAS_FOLDER_SETTING)


def test_cancel_raised_by_progress_reaches_the_caller(context, head):
    volume = nodes.output_volume(context.scene, "chi", head["chi"], head["affine"])
    segmentation = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "DGM")

    def progress(stage, fraction):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        ROISusceptibilityLogic().segmentFromAtlas(volume, segmentation, head["template"], progress=progress)
    assert nodes.segment_ids(segmentation) == []
