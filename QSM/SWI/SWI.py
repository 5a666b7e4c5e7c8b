"""SWI: susceptibility-weighted images and minimum intensity projections from the scene.

A thin adapter over qsmlib.swi: nodes in, qsmlib.swi.swi, nodes out. The
Widget only wires the GUI to the parameter node and calls the Logic.
"""

import logging
from dataclasses import dataclass
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
from qsmslicer import threads as slicer_threads
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

@dataclass
class SWIOutputs:
    swi: object
    mip: object


class SWILogic(ScriptedLoadableModuleLogic):
    """Nodes in, qsmlib.swi, nodes out. Runs without a GUI."""

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

    @staticmethod
    def projectionAxis(volume_node):
        """The voxel axis closest to the scanner's S-I axis: the slice axis of the mIP."""
        return int(np.argmax(np.abs(nodes.b0_direction(volume_node))))

    def process(self, magnitude, phase, *, te_s=None, mask=None, mask_segment_ids=None, kind="negative",
                power=4.0, filter_size=qsm_swi.DEFAULT_FILTER_SIZE, slab_mm=qsm_swi.DEFAULT_SLAB_MM,
                phase_sign=1, output_name=None, outputs=None, dicom_lookup=None):
        """SWI and mIP volumes from magnitude and phase nodes.

        ``magnitude`` and ``phase`` are lists of scalar volumes, sequences or
        multi-volumes (as in QSM Reconstruction). Echo times (s) are needed for
        several echoes and are read from DICOM attributes when not given. The
        mIP runs over ``slab_mm`` along the voxel axis closest to S-I. Outputs
        carry the input's IJKToRAS.
        """
        dependencies.ensure_packages_in_slicer(_("SWI"))
        from qsmlib.io.phase_scaling import phase_to_radians

        if phase_sign not in (1, -1):
            raise QSMInputError(f"phase sign {phase_sign}: give 1 or -1")
        magnitude_array, reference_node = nodes.echo_series_array(magnitude, "magnitude")
        phase_array, phase_node = nodes.echo_series_array(phase, "phase")
        nodes.check_same_geometry(phase_node, reference_node, "phase")
        if magnitude_array.shape != phase_array.shape:
            raise QSMInputError(f"magnitude has shape {magnitude_array.shape} but phase has {phase_array.shape}")
        if te_s is None and magnitude_array.shape[3] > 1:
            te_s = echo_times.echo_times_s(magnitude, nodes.echo_volume_nodes(magnitude), dicom_lookup)
            if te_s is None:
                raise QSMInputError("echo times: several echoes need echo times; type them in seconds")
        phase_rad, scaling = phase_to_radians(phase_array, name="phase")
        del phase_array
        mask_array = None if mask is None else nodes.mask_from_node(mask, reference_node, mask_segment_ids)
        with slicer_threads.computation_threads():  # the thread count of Slicer's own processing
            result = qsm_swi.swi(magnitude_array, phase_sign * phase_rad, mask_array,
                                 nodes.voxel_size(reference_node), te_s=te_s, filter_size=filter_size, kind=kind,
                                 power=power, phase_convention="left-handed", slab_mm=slab_mm,
                                 mip_axis=self.projectionAxis(reference_node))
        logging.info("SWI: phase %s, mIP over %.1f mm", scaling["detected"], slab_mm)
        outputs = outputs or SWIOutputs(None, None)
        base = output_name or (magnitude[0] if isinstance(magnitude, (list, tuple)) else magnitude).GetName()
        affine = nodes.ijk_to_ras(reference_node)
        scene = (reference_node if isinstance(magnitude, (list, tuple)) else magnitude).GetScene()
        swi_node = nodes.output_volume(scene, f"{base}_SWI", result.swi, affine, node=outputs.swi,
                                       beside=reference_node)
        mip_node = nodes.output_volume(scene, f"{base}_mIP", result.mip, affine, node=outputs.mip,
                                       beside=reference_node)
        return SWIOutputs(swi_node, mip_node)


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
