"""ROI Susceptibility: susceptibility statistics per segment, in a table node with units.

The Logic creates the usual deep grey matter segments, empty to paint or filled
from an atlas template registered to the susceptibility map, computes mean,
median, SD, minimum, maximum, voxel count and volume per segment (optionally
relative to a reference region), with the mean paramagnetic and diamagnetic
parts (chi-separation) when those maps are given, fills a table node, makes a
bar plot and exports CSV. That scene-level part is :class:`qsmslicer.roi.RoiLogic`,
which the web app runs too; this module adds the parameter node.
"""

import os
import pathlib
from typing import Annotated, Optional, Union

import numpy as np
import qt
import slicer
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode,
                    vtkMRMLTableNode)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from qsmlib.errors import QSMInputError
from qsmslicer import dependencies, nodes
from qsmslicer.progress import ATLAS_STAGE_WEIGHTS, run_with_progress_dialog
from qsmslicer.roi import REFERENCES, RoiLogic
from qsmslicer.widget import ParameterNodeWidgetMixin

#: Application setting that remembers the atlas template folder between sessions.
ATLAS_FOLDER_SETTING = "SlicerQSM/AtlasTemplateFolder"


#
# ROISusceptibility
#

class ROISusceptibility(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ROI Susceptibility")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["Segmentations", "SegmentEditor", "Tables", "Plots"]
        self.parent.contributors = ["SlicerQSM developers"]
        self.parent.helpText = _(
            "Susceptibility statistics per segment (mean, median, SD, min, max in ppm, voxel count, "
            "volume in mm3) in a table, a bar plot and CSV. One click creates the deep grey matter "
            "segments to draw in the Segment Editor, or fills them from an atlas template registered to "
            "the susceptibility map. Values can be referenced to the whole brain or to a segment. With the "
            "chi-separation maps of QSM Reconstruction, the mean paramagnetic (chi_pos) and diamagnetic (chi_neg) "
            "parts per segment are added.")
        self.parent.acknowledgementText = _("Built on QSMLib.")


#
# Parameter node
#

@parameterNodeWrapper
class ROISusceptibilityParameterNode:
    susceptibility: Optional[vtkMRMLScalarVolumeNode]
    segmentation: Optional[vtkMRMLSegmentationNode]
    reference: Annotated[str, Choice(list(REFERENCES))] = "none"
    referenceSegmentName: str = ""
    brainMask: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    chiPos: Optional[vtkMRMLScalarVolumeNode]
    chiNeg: Optional[vtkMRMLScalarVolumeNode]
    outputTable: Optional[vtkMRMLTableNode]
    atlasFolder: pathlib.Path


#
# ROISusceptibilityWidget
#

class ROISusceptibilityWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the GUI to the parameter node; every computation is in the Logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.loadModuleUi("ROISusceptibility.ui", ROISusceptibilityLogic())
        self.ui.createSegmentsButton.connect("clicked(bool)", self.onCreateSegments)
        self.ui.segmentFromAtlasButton.connect("clicked(bool)", self.onSegmentFromAtlas)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        # The segment selector has no parameter-node connector: it writes the segment's name.
        self.ui.referenceSegmentSelector.connect("currentSegmentChanged(QString)", self.onReferenceSegmentChanged)
        self.connectScene(slicer.mrmlScene)

    def onReferenceSegmentChanged(self, segmentId):
        if self._parameterNode and not self._updatingSegmentSelector:
            self._parameterNode.referenceSegmentName = self.logic.segmentName(self._parameterNode.segmentation,
                                                                              segmentId)

    _updatingSegmentSelector = False

    def parameterNodeConnecting(self):
        """A parameter node without an atlas folder gets the one remembered from the last session."""
        if not self.logic.hasAtlasFolder(self._parameterNode):
            remembered = qt.QSettings().value(ATLAS_FOLDER_SETTING, "")
            if remembered and os.path.isdir(str(remembered)):
                self._parameterNode.atlasFolder = pathlib.Path(str(remembered))

    def onParameterNodeModified(self):
        """The segment selector shows the parameter node's segmentation and reference segment."""
        parameters = self._parameterNode
        selector = self.ui.referenceSegmentSelector
        self._updatingSegmentSelector = True
        try:
            if selector.currentNode() is not parameters.segmentation:
                selector.setCurrentNode(parameters.segmentation)
            wanted = ""
            if parameters.segmentation is not None and parameters.referenceSegmentName:
                wanted = parameters.segmentation.GetSegmentation().GetSegmentIdBySegmentName(
                    parameters.referenceSegmentName)
            if wanted and selector.currentSegmentID() != wanted:
                selector.setCurrentSegmentID(wanted)
        finally:
            self._updatingSegmentSelector = False
        if not parameters.referenceSegmentName and selector.currentSegmentID():
            self.onReferenceSegmentChanged(selector.currentSegmentID())

    def _checkCanApply(self, caller=None, event=None):
        reason = self.logic.missingInputs(self._parameterNode) if self._parameterNode else _("No parameter node")
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Compute statistics per segment")
        self.ui.statusLabel.text = reason or ""
        self.ui.createSegmentsButton.enabled = self._parameterNode is not None and \
            self._parameterNode.susceptibility is not None
        atlas_reason = self.logic.missingAtlasInputs(self._parameterNode) if self._parameterNode else ""
        self.ui.segmentFromAtlasButton.enabled = self._parameterNode is not None and not atlas_reason
        self.ui.segmentFromAtlasButton.toolTip = atlas_reason or _(
            "Register the atlas template to the susceptibility map and fill the segmentation with its structures")
        self.ui.exportButton.enabled = self._parameterNode is not None and self._parameterNode.outputTable is not None

    def _ensureSegmentation(self):
        """A segmentation node named after the susceptibility map, created when none is selected."""
        parameters = self._parameterNode
        if parameters.segmentation is None:
            parameters.segmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{parameters.susceptibility.GetName()}_DGM")
            parameters.segmentation.CreateDefaultDisplayNodes()

    def onCreateSegments(self):
        with slicer.util.tryWithErrorDisplay(_("Could not create the segments."), waitCursor=True):
            parameters = self._parameterNode
            self._ensureSegmentation()
            self.logic.createDeepGreyMatterSegments(parameters.segmentation, parameters.susceptibility)
            slicer.util.selectModule("SegmentEditor")

    def onSegmentFromAtlas(self):
        with slicer.util.tryWithErrorDisplay(_("Atlas segmentation needs Python packages.")):
            dependencies.ensure_packages_in_slicer(_("ROI Susceptibility"))
        with slicer.util.tryWithErrorDisplay(_("Could not segment from the atlas."), waitCursor=True):
            parameters = self._parameterNode
            self._ensureSegmentation()
            qt.QSettings().setValue(ATLAS_FOLDER_SETTING, str(parameters.atlasFolder))
            result, cancelled = run_with_progress_dialog(
                lambda progress: self.logic.segmentFromAtlasParameterNode(parameters, progress=progress),
                title=_("Segment from atlas"), create_dialog=slicer.util.createProgressDialog,
                process_events=slicer.app.processEvents, weights=ATLAS_STAGE_WEIGHTS)
            self.ui.statusLabel.text = _("Cancelled") if cancelled else self.logic.atlasSummary(result)

    def onApplyButton(self):
        with slicer.util.tryWithErrorDisplay(_("Could not compute the statistics."), waitCursor=True):
            table = self.logic.processParameterNode(self._parameterNode)
            chart = self.logic.createBarPlot(table)
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

    def onExportButton(self):
        path = qt.QFileDialog.getSaveFileName(None, _("Export statistics"), "", "CSV (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not write the CSV file."), waitCursor=True):
                self.logic.exportCsv(self._parameterNode.outputTable, path)


#
# ROISusceptibilityLogic
#

class ROISusceptibilityLogic(ScriptedLoadableModuleLogic, RoiLogic):
    """:class:`qsmslicer.roi.RoiLogic` (segments, statistics table, plot, CSV) with the parameter node.

    Runs without a GUI.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ROISusceptibilityParameterNode(super().getParameterNode())

    def missingInputs(self, parameterNode):
        if parameterNode.susceptibility is None:
            return _("Select a susceptibility volume")
        if parameterNode.segmentation is None:
            return _("Select a segmentation, or create the deep grey matter segments")
        if parameterNode.reference == "segment" and not parameterNode.referenceSegmentName:
            return _("Choose the reference segment")
        if (parameterNode.chiPos is None) != (parameterNode.chiNeg is None):
            return _("Select both chi_pos and chi_neg, or neither")
        return ""

    def processParameterNode(self, parameterNode):
        segmentation = parameterNode.segmentation
        reference_id = None
        if parameterNode.reference == "segment":
            reference_id = self.segmentIdByName(segmentation, parameterNode.referenceSegmentName)
        table = self.computeStatistics(parameterNode.susceptibility, segmentation,
                                       reference=parameterNode.reference, reference_segment_id=reference_id,
                                       brain_mask=parameterNode.brainMask, table=parameterNode.outputTable,
                                       chi_pos=parameterNode.chiPos, chi_neg=parameterNode.chiNeg)
        parameterNode.outputTable = table
        return table

    # -- the atlas template folder --------------------------------------------------------------

    @staticmethod
    def hasAtlasFolder(parameterNode):
        """Whether the parameter node names an atlas folder (the unset path is empty or '.')."""
        return parameterNode is not None and str(parameterNode.atlasFolder) not in ("", ".")

    def missingAtlasInputs(self, parameterNode):
        """Why "Segment from atlas" cannot run yet ("" when it can)."""
        if parameterNode.susceptibility is None:
            return _("Select a susceptibility volume")
        if not self.hasAtlasFolder(parameterNode):
            return _("Choose the atlas template folder")
        if not os.path.isdir(str(parameterNode.atlasFolder)):
            return _("The atlas template folder does not exist: choose another")
        return ""

    def segmentFromAtlasParameterNode(self, parameterNode, progress=None):
        """:meth:`segmentFromAtlas` with the parameter node's inputs; the segmentation node is created if needed."""
        reason = self.missingAtlasInputs(parameterNode)
        if reason:
            raise QSMInputError(reason)
        if parameterNode.segmentation is None:
            scene = parameterNode.susceptibility.GetScene()
            parameterNode.segmentation = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{parameterNode.susceptibility.GetName()}_DGM")
            parameterNode.segmentation.CreateDefaultDisplayNodes()
        return self.segmentFromAtlas(parameterNode.susceptibility, parameterNode.segmentation,
                                     parameterNode.atlasFolder, brain_mask=parameterNode.brainMask,
                                     progress=progress)


#
# ROISusceptibilityTest
#

class ROISusceptibilityTest(ScriptedLoadableModuleTest):
    """Self-test (Reload and Test, or ctest): statistics of known values, referencing, no node left behind."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_statistics_on_known_values()

    def test_statistics_on_known_values(self):
        scene = slicer.mrmlScene
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        values = np.zeros((10, 8, 6), np.float32)
        values[1:4, 1:4, 1:3] = 0.2      # 18 voxels of 2 mm3
        values[5:9, 4:7, 3:5] = -0.05    # 24 voxels
        chi = nodes.output_volume(scene, "chi", values, affine)
        labels = np.zeros(values.shape, np.uint8)
        labels[values > 0], labels[values < 0] = 1, 2
        labelmap = nodes.output_volume(scene, "labels", labels, affine, class_name="vtkMRMLLabelMapVolumeNode")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        ids = nodes.segment_ids(segmentation)
        count = scene.GetNumberOfNodes()

        logic = ROISusceptibilityLogic()
        table = logic.computeStatistics(chi, segmentation, reference="segment", reference_segment_id=ids[1])
        rows = table.GetTable()
        self.assertAlmostEqual(rows.GetValueByName(0, "Mean").ToDouble(), 0.25, places=6)  # 0.2 - (-0.05)
        self.assertAlmostEqual(rows.GetValueByName(1, "Mean").ToDouble(), 0.0, places=6)
        self.assertEqual(rows.GetValueByName(0, "Voxel count").ToInt(), 18)
        self.assertAlmostEqual(rows.GetValueByName(1, "Volume").ToDouble(), 48.0)
        self.assertAlmostEqual(rows.GetValueByName(0, "SD").ToDouble(), 0.0, places=6)
        self.assertEqual(scene.GetNumberOfNodes(), count + 1)  # the table and nothing else
        self.delayDisplay("Test passed")
