"""QSM Reconstruction: susceptibility maps from multi-echo gradient-echo volumes in the scene.

The Logic is the adapter: nodes in, qsmlib.pipeline.reconstruct, nodes out. Its
scene-level part is :class:`qsmslicer.reconstruction.ReconstructionLogic`, which
the web app runs too; this module adds the parameter node. The Widget only wires
the GUI to the parameter node and calls the Logic.
"""

import json
import os
from typing import Annotated, Optional, Union

import numpy as np
import slicer
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode,
                    vtkMRMLSequenceNode)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from qsmlib.errors import ImplausibleMaskError, QSMInputError
from qsmlib.pipeline import BGREMOVE_METHODS, INVERSION_METHODS, PRESETS, UNWRAP_METHODS
from qsmslicer import dependencies, echo_times, nodes, sample_data
from qsmslicer.progress import SEPARATION_STAGE_WEIGHTS, STAGE_WEIGHTS, run_with_progress_dialog
from qsmslicer.reconstruction import PROVENANCE_ATTRIBUTE, ReconstructionLogic, ReconstructionOutputs
from qsmslicer.widget import ParameterNodeWidgetMixin

#: What an echo series selector offers: a sequence, or one (multi-component) volume.
EchoSeries = Optional[Union[vtkMRMLSequenceNode, vtkMRMLScalarVolumeNode]]
#: What a mask selector offers.
MaskNode = Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
#: Units of the optional R2 or T2 map for chi-separation (the panel's choice, the Logic's ``r2_unit``).
R2_UNITS = ("R2 (1/s)", "T2 (s)")


#
# QSMReconstruction
#

class QSMReconstruction(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("QSM Reconstruction")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["Sequences", "SampleData", "Segmentations"]
        self.parent.contributors = ["SlicerQSM developers"]
        self.parent.helpText = _(
            "Quantitative susceptibility mapping from multi-echo gradient-echo magnitude and phase. "
            "Give the echoes as a list of volumes, a sequence or a multi-component volume; echo times come from "
            "the DICOM attributes when the series was loaded through the DICOM module, or are typed "
            "in seconds. Outputs: susceptibility (ppm), local and total field (Hz) and the mask; optionally the "
            "paramagnetic (iron) and diamagnetic (myelin) parts by chi-separation, from R2* and, when one is "
            "selected, an R2 or T2 map.")
        self.parent.acknowledgementText = _(
            "Built on QSMLib. The simulated head derives from the QSM reconstruction challenge 2.0 "
            "head model (NeuroPoly, MIT licence).")
        # The simulated head appears in the Sample Data module once Slicer has started.
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: the simulated multi-echo head, generated here (no download), loaded by URI
#

SAMPLE_DATA_ICON = "QSMSimulatedHead.png"


def registerSampleData():
    """Register the simulated heads in the Sample Data module (see :mod:`qsmslicer.sample_data`)."""
    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", SAMPLE_DATA_ICON)
    sample_data.register(icon, loadSimulatedHead)


def loadSimulatedHead(source=None, name="QSMSimulatedHead2mm"):
    """The Sample Data button: load the head, show its first echo and select it as QSM Reconstruction's input.

    Returns ``[magnitude sequence, phase sequence]`` (echo times in the sequence index, ms).
    """
    with slicer.util.tryWithErrorDisplay(_("Could not load the simulated head."), waitCursor=True):
        magnitude, phase = sample_data.load(name)
        slicer.util.setSliceViewerLayers(background=nodes.displayable_volume(magnitude), fit=True)
        logic = QSMReconstructionLogic()
        logic.selectInputs(logic.getParameterNode(), magnitude, phase)
        return [magnitude, phase]


#
# Parameter node
#

@parameterNodeWrapper
class QSMReconstructionParameterNode:
    """Inputs: magnitude and phase as checked volume lists, or as a sequence / multi-component volume each."""

    magnitudeEchoes: list[vtkMRMLScalarVolumeNode]
    phaseEchoes: list[vtkMRMLScalarVolumeNode]
    magnitudeSeries: EchoSeries
    phaseSeries: EchoSeries
    echoTimesS: str = ""
    fieldStrengthT: Annotated[float, WithinRange(0.1, 21.1)] = 3.0
    mask: MaskNode
    preset: Annotated[str, Choice(list(PRESETS))] = "consensus"
    unwrap: Annotated[str, Choice(list(UNWRAP_METHODS))] = PRESETS["consensus"]["unwrap"]
    bgremove: Annotated[str, Choice(list(BGREMOVE_METHODS))] = PRESETS["consensus"]["bgremove"]
    inversion: Annotated[str, Choice(list(INVERSION_METHODS))] = PRESETS["consensus"]["inversion"]
    reference: Annotated[str, Choice(["brain", "csf", "none"])] = "brain"
    flipPhaseSign: bool = False
    options: str = ""
    outputSusceptibility: Optional[vtkMRMLScalarVolumeNode]
    outputLocalField: Optional[vtkMRMLScalarVolumeNode]
    outputTotalField: Optional[vtkMRMLScalarVolumeNode]
    outputMask: Optional[vtkMRMLLabelMapVolumeNode]
    separation: bool = False
    r2Map: Optional[vtkMRMLScalarVolumeNode]
    r2MapUnit: Annotated[str, Choice(list(R2_UNITS))] = R2_UNITS[0]
    outputChiPos: Optional[vtkMRMLScalarVolumeNode]
    outputChiNeg: Optional[vtkMRMLScalarVolumeNode]
    outputR2Prime: Optional[vtkMRMLScalarVolumeNode]


#
# QSMReconstructionWidget
#

class QSMReconstructionWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the GUI to the parameter node; every computation is in the Logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.loadModuleUi("QSMReconstruction.ui", QSMReconstructionLogic())
        self.connectEchoLists()
        self.ui.readEchoTimesButton.connect("clicked(bool)", self.onReadEchoTimes)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.connectScene(slicer.mrmlScene)

    def parameterNodeConnecting(self):
        # The preset shown when the node is (re)bound is not a choice the user just made.
        self._shownPreset = self._parameterNode.preset

    def onParameterNodeModified(self):
        """A newly chosen preset sets the stage methods; binding the GUI again does not."""
        if self._parameterNode.preset != self._shownPreset:
            self._shownPreset = self._parameterNode.preset
            self.logic.applyPreset(self._parameterNode)

    def onReadEchoTimes(self):
        with slicer.util.tryWithErrorDisplay(_("Could not read echo times."), waitCursor=True):
            self.logic.fillAcquisitionFromDicom(self._parameterNode)

    def _checkCanApply(self, caller=None, event=None):
        reason = self.logic.missingInputs(self._parameterNode) if self._parameterNode else _("No parameter node")
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Reconstruct the susceptibility map")
        self.ui.statusLabel.text = reason or ""
        # the R2 or T2 map is used only by the separation
        separating = bool(self._parameterNode is not None and self._parameterNode.separation)
        self.ui.r2MapSelector.enabled = separating
        self.ui.r2MapUnitComboBox.enabled = separating

    def onApplyButton(self):
        with slicer.util.tryWithErrorDisplay(_("QSM reconstruction needs Python packages.")):
            dependencies.ensure_packages_in_slicer(_("QSM Reconstruction"))
        refusal = self._runWithProgress(accept_implausible_mask=False)
        if refusal is not None and slicer.util.confirmYesNoDisplay(
                self.logic.implausibleMaskQuestion(refusal), windowTitle=_("QSM reconstruction")):
            self._runWithProgress(accept_implausible_mask=True)

    def _runWithProgress(self, accept_implausible_mask):
        """Run with a progress dialog; return the ImplausibleMaskError that stopped the run, if one did."""
        with slicer.util.tryWithErrorDisplay(_("QSM reconstruction failed."), waitCursor=True):
            try:
                outputs, cancelled = run_with_progress_dialog(
                    lambda progress: self.logic.processParameterNode(
                        self._parameterNode, progress=progress, accept_implausible_mask=accept_implausible_mask),
                    title=_("QSM reconstruction"), create_dialog=slicer.util.createProgressDialog,
                    process_events=slicer.app.processEvents,
                    weights=SEPARATION_STAGE_WEIGHTS if self._parameterNode.separation else STAGE_WEIGHTS)
            except ImplausibleMaskError as refusal:
                self.ui.statusLabel.text = _("No map was written: the brain mask is implausible")
                return refusal
            self.ui.statusLabel.text = _("Cancelled") if cancelled else self.logic.warningsText(outputs)
        return None


#
# QSMReconstructionLogic
#

class QSMReconstructionLogic(ScriptedLoadableModuleLogic, ReconstructionLogic):
    """:class:`qsmslicer.reconstruction.ReconstructionLogic` (nodes in, qsmlib, nodes out) with the parameter node.

    Runs without a GUI (Python console, scripts, tests).
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return QSMReconstructionParameterNode(super().getParameterNode())

    @staticmethod
    def applyPreset(parameterNode):
        """Set the stage methods of the parameter node's preset."""
        for stage, method in PRESETS[parameterNode.preset].items():
            setattr(parameterNode, stage, method)

    # -- inputs ---------------------------------------------------------------------------------

    def missingInputs(self, parameterNode):
        """Why Apply cannot run yet ("" when it can)."""
        reason = echo_times.missing_echo_series(parameterNode)
        if reason:
            return reason
        magnitude, _phase = echo_times.selected_echo_series(parameterNode)
        if not parameterNode.echoTimesS.strip() and self.echoTimes(magnitude) is None:
            return _("Type the echo times in seconds, or read them from DICOM")
        return ""

    def selectInputs(self, parameterNode, magnitude, phase, dicom_lookup=None):
        """Use two sequences (or multi-volumes) as inputs, with the echo times and field strength they carry."""
        parameterNode.magnitudeSeries = magnitude
        parameterNode.phaseSeries = phase
        if self.echoTimes(magnitude, dicom_lookup) is not None:
            self.fillAcquisitionFromDicom(parameterNode, dicom_lookup)

    def fillAcquisitionFromDicom(self, parameterNode, dicom_lookup=None):
        """Put the DICOM echo times and field strength of the magnitude series into the parameter node."""
        magnitude, _phase = echo_times.selected_echo_series(parameterNode)
        te = self.echoTimes(magnitude, dicom_lookup)
        if te is None:
            raise QSMInputError("the selected volumes carry no DICOM echo times; type them in seconds")
        parameterNode.echoTimesS = echo_times.format_seconds(te)
        b0 = echo_times.field_strength_t(nodes.echo_volume_nodes(magnitude), dicom_lookup)
        if b0:
            parameterNode.fieldStrengthT = b0

    def processParameterNode(self, parameterNode, progress=None, accept_implausible_mask=False):
        """Run :meth:`process` on the parameter node's inputs and store the outputs in it.

        ``accept_implausible_mask`` goes on with a brain mask that fails its plausibility
        check (by default :class:`~qsmlib.errors.ImplausibleMaskError` stops the run).
        """
        magnitude, phase = echo_times.selected_echo_series(parameterNode)
        if not parameterNode.echoTimesS.strip():
            self.fillAcquisitionFromDicom(parameterNode)
        outputs = self.process(
            magnitude, phase, te_s=echo_times.parse_seconds(parameterNode.echoTimesS),
            b0_t=parameterNode.fieldStrengthT, mask=parameterNode.mask, unwrap=parameterNode.unwrap,
            bgremove=parameterNode.bgremove, inversion=parameterNode.inversion,
            reference=parameterNode.reference, options=self.parseOptions(parameterNode.options),
            phase_sign=-1 if parameterNode.flipPhaseSign else 1,
            preset=parameterNode.preset, accept_implausible_mask=accept_implausible_mask,
            separation=parameterNode.separation, r2=parameterNode.r2Map if parameterNode.separation else None,
            r2_unit="T2" if parameterNode.r2MapUnit == R2_UNITS[1] else "R2",
            outputs=ReconstructionOutputs(parameterNode.outputSusceptibility, parameterNode.outputLocalField,
                                          parameterNode.outputTotalField, parameterNode.outputMask,
                                          chi_pos=parameterNode.outputChiPos, chi_neg=parameterNode.outputChiNeg,
                                          r2prime=parameterNode.outputR2Prime),
            progress=progress)
        parameterNode.outputSusceptibility = outputs.susceptibility
        parameterNode.outputLocalField = outputs.local_field
        parameterNode.outputTotalField = outputs.total_field
        parameterNode.outputMask = outputs.mask
        if outputs.chi_pos is not None:
            parameterNode.outputChiPos = outputs.chi_pos
            parameterNode.outputChiNeg = outputs.chi_neg
            parameterNode.outputR2Prime = outputs.r2prime
        shown = nodes.displayable_volume(magnitude)
        slicer.util.setSliceViewerLayers(background=shown if shown is not None else "keep-current",
                                         foreground=outputs.susceptibility, foregroundOpacity=0.8)
        return outputs


#
# QSMReconstructionTest
#

class QSMReconstructionTest(ScriptedLoadableModuleTest):
    """Self-test (Reload and Test, or ctest): the sample head reconstructed within its known accuracy."""

    #: Bounds on the 2 mm sample head (seed 0), consensus preset: measured 0.023 ppm and 51.6 % (nltv).
    DGM_MAX_ERROR_PPM = 0.03
    NRMSE_MAX_PERCENT = 72.0

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_head_reconstruction()

    def test_sample_head_reconstruction(self):
        import SampleData
        from qsmlib.workflow import accuracy_metrics

        self.delayDisplay("Loading the simulated head from Sample Data")
        registerSampleData()
        magnitude, phase = SampleData.SampleDataLogic().downloadSamples("QSMSimulatedHead2mm")
        truth = sample_data.simulated_head(2.0)  # the same simulation: its ground truth
        loaded = nodes.array_from_volume(magnitude.GetNthDataNode(0))
        self.assertLess(float(np.max(np.abs(loaded - truth.magnitude[..., 0]))), 1e-5)

        self.delayDisplay("Reconstructing")
        logic = QSMReconstructionLogic()
        parameters = logic.getParameterNode()
        logic.selectInputs(parameters, magnitude, phase)
        np.testing.assert_allclose(echo_times.parse_seconds(parameters.echoTimesS), truth.te_s, rtol=1e-6)
        outputs = logic.processParameterNode(parameters)

        chi = nodes.array_from_volume(outputs.susceptibility)
        mask = nodes.array_from_volume(outputs.mask) > 0
        tissues = sample_data.head_tissues(2.0)
        metrics = accuracy_metrics(chi, truth.chi_ppm, mask & truth.brain_mask, truth.labels, tissues)
        self.assertLess(metrics["dgm_max_abs_error_ppm"], self.DGM_MAX_ERROR_PPM)
        self.assertLess(metrics["nrmse_percent"], self.NRMSE_MAX_PERCENT)
        np.testing.assert_allclose(nodes.ijk_to_ras(outputs.susceptibility), truth.affine, atol=1e-6)
        self.assertEqual(json.loads(outputs.susceptibility.GetAttribute(PROVENANCE_ATTRIBUTE))["inputs"]["preset"],
                         parameters.preset)
        self.delayDisplay("Test passed")
