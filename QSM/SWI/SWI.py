"""SWI: susceptibility-weighted images and minimum intensity projections from the scene.

A thin adapter over qsmlib.swi: nodes in, qsmlib.swi.swi, nodes out. That
scene-level part is :class:`qsmslicer.swi.SwiLogic`, which the web app runs too;
this module adds the parameter node. The Widget only wires the GUI to the
parameter node and calls the Logic.
"""

from typing import Annotated, Optional, Union

import numpy as np
import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLSequenceNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from qsmlib import swi as qsm_swi
from qsmlib.errors import QSMInputError
from qsmslicer import dependencies, echo_times, nodes, sample_data
from qsmslicer.swi import SWIOutputs, SwiLogic
from qsmslicer.widget import ParameterNodeWidgetMixin


#
# SWI
#

class SWI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SWI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["QSMReconstruction", "Sequences", "SampleData", "Segmentations"]
        self.parent.contributors = ["SlicerQSM developers"]
        self.parent.helpText = _(
            "Susceptibility-weighted imaging (Haacke et al. 2004) and a sliding minimum intensity "
            "projection from single- or multi-echo magnitude and phase. The default phase mask darkens "
            "paramagnetic sources such as veins.")
        self.parent.acknowledgementText = _("Built on QSMLib.")


#
# Parameter node
#

@parameterNodeWrapper
class SWIParameterNode:
    magnitudeEchoes: list[vtkMRMLScalarVolumeNode]
    phaseEchoes: list[vtkMRMLScalarVolumeNode]
    magnitudeSeries: Optional[Union[vtkMRMLSequenceNode, vtkMRMLScalarVolumeNode]]
    phaseSeries: Optional[Union[vtkMRMLSequenceNode, vtkMRMLScalarVolumeNode]]
    echoTimesS: str = ""
    mask: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    maskType: Annotated[str, Choice(list(qsm_swi.PHASE_MASKS))] = "negative"
    power: Annotated[float, WithinRange(1.0, 10.0)] = 4.0
    filterSize: Annotated[int, WithinRange(4, 128)] = qsm_swi.DEFAULT_FILTER_SIZE
    slabMm: Annotated[float, WithinRange(0.0, 50.0)] = qsm_swi.DEFAULT_SLAB_MM
    flipPhaseSign: bool = False
    outputSWI: Optional[vtkMRMLScalarVolumeNode]
    outputMIP: Optional[vtkMRMLScalarVolumeNode]


#
# SWIWidget
#

class SWIWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the GUI to the parameter node; every computation is in the Logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.loadModuleUi("SWI.ui", SWILogic())
        self.connectEchoLists()
        self.ui.readEchoTimesButton.connect("clicked(bool)", self.onReadEchoTimes)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.connectScene(slicer.mrmlScene)

    def onReadEchoTimes(self):
        with slicer.util.tryWithErrorDisplay(_("Could not read echo times."), waitCursor=True):
            self.logic.fillEchoTimesFromDicom(self._parameterNode)

    def _checkCanApply(self, caller=None, event=None):
        reason = self.logic.missingInputs(self._parameterNode) if self._parameterNode else _("No parameter node")
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Compute SWI and its minimum intensity projection")
        self.ui.statusLabel.text = reason or ""

    def onApplyButton(self):
        with slicer.util.tryWithErrorDisplay(_("SWI needs Python packages.")):
            dependencies.ensure_packages_in_slicer(_("SWI"))
        with slicer.util.tryWithErrorDisplay(_("SWI failed."), waitCursor=True):
            self.logic.processParameterNode(self._parameterNode)


#
# SWILogic
#

class SWILogic(ScriptedLoadableModuleLogic, SwiLogic):
    """:class:`qsmslicer.swi.SwiLogic` (nodes in, qsmlib.swi, nodes out) with the parameter node.

    Runs without a GUI.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SWIParameterNode(super().getParameterNode())

    def missingInputs(self, parameterNode):
        return echo_times.missing_echo_series(parameterNode)

    def fillEchoTimesFromDicom(self, parameterNode, dicom_lookup=None):
        magnitude, _phase = echo_times.selected_echo_series(parameterNode)
        te = echo_times.echo_times_s(magnitude, nodes.echo_volume_nodes(magnitude), dicom_lookup)
        if te is None:
            raise QSMInputError("the selected volumes carry no DICOM echo times; type them in seconds")
        parameterNode.echoTimesS = echo_times.format_seconds(te)

    def processParameterNode(self, parameterNode):
        magnitude, phase = echo_times.selected_echo_series(parameterNode)
        te = echo_times.parse_seconds(parameterNode.echoTimesS) or None
        outputs = self.process(magnitude, phase, te_s=te, mask=parameterNode.mask, kind=parameterNode.maskType,
                               power=parameterNode.power, filter_size=parameterNode.filterSize,
                               slab_mm=parameterNode.slabMm, phase_sign=-1 if parameterNode.flipPhaseSign else 1,
                               outputs=SWIOutputs(parameterNode.outputSWI, parameterNode.outputMIP))
        parameterNode.outputSWI = outputs.swi
        parameterNode.outputMIP = outputs.mip
        slicer.util.setSliceViewerLayers(background=outputs.mip)
        return outputs


#
# SWITest
#

class SWITest(ScriptedLoadableModuleTest):
    """Self-test (Reload and Test, or ctest): on the sample head, SWI darkens veins far more than white matter."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_veins_are_dark()

    def test_veins_are_dark(self):
        import SampleData
        from QSMReconstruction import registerSampleData  # the extension's samples (a declared dependency)

        self.delayDisplay("Loading the simulated head from Sample Data")
        registerSampleData()
        magnitude, phase = SampleData.SampleDataLogic().downloadSamples("QSMSimulatedHead2mm")
        truth = sample_data.simulated_head(2.0)
        tissues = {tissue.name: label for label, tissue in sample_data.head_tissues(2.0).items()}
        outputs = SWILogic().process(magnitude, phase, slab_mm=8.0)  # echo times from the sequence
        swi = nodes.array_from_volume(outputs.swi)
        mip = nodes.array_from_volume(outputs.mip)
        self.assertTrue(np.all(np.isfinite(swi)))
        self.assertTrue(np.all(mip <= swi + 1e-6))  # a minimum over a slab that holds the voxel
        combined = np.sqrt(np.mean(truth.magnitude ** 2, axis=-1))
        ratios = {name: float(np.median(swi[truth.labels == tissues[name]]
                                        / np.maximum(combined[truth.labels == tissues[name]], 1e-6)))
                  for name in ("Blood", "WM")}
        # SWI / combined magnitude: measured 0.77 in venous blood against 0.91 in white matter.
        self.assertLess(ratios["Blood"], 0.9 * ratios["WM"], ratios)
        self.delayDisplay("Test passed")
