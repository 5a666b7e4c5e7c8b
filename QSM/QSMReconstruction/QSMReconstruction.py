"""QSM Reconstruction: susceptibility maps from multi-echo gradient-echo volumes in the scene.

The Logic is the adapter: nodes in, qsmlib.pipeline.reconstruct, nodes out. The
Widget only wires the GUI to the parameter node and calls the Logic.
"""

import json
import logging
import os
import re
from dataclasses import dataclass, field
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
from qsmlib.pipeline import (BGREMOVE_METHODS, INVERSION_METHODS, PRESETS, UNWRAP_METHODS, PipelineConfig,
                             reconstruct)
from qsmslicer import dependencies, display, echo_times, nodes, sample_data
from qsmslicer import threads as slicer_threads
from qsmslicer.progress import SEPARATION_STAGE_WEIGHTS, STAGE_WEIGHTS, run_with_progress_dialog
from qsmslicer.widget import ParameterNodeWidgetMixin

REFERENCES = ("brain", "csf", "none", "region")
PROVENANCE_ATTRIBUTE = "QSM.Provenance"
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

@dataclass
class ReconstructionOutputs:
    """Output nodes of one run, and the run's provenance (also stored on the susceptibility node).

    ``chi_pos``, ``chi_neg`` (ppm) and ``r2prime`` (1/s) are the chi-separation's
    outputs, None when the run had no separation.
    """

    susceptibility: object
    local_field: object
    total_field: Optional[object]
    mask: object
    provenance: dict = field(default_factory=dict)
    chi_pos: Optional[object] = None
    chi_neg: Optional[object] = None
    r2prime: Optional[object] = None


class QSMReconstructionLogic(ScriptedLoadableModuleLogic):
    """Nodes in, qsmlib, nodes out. Runs without a GUI (Python console, scripts, tests)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return QSMReconstructionParameterNode(super().getParameterNode())

    @staticmethod
    def applyPreset(parameterNode):
        """Set the stage methods of the parameter node's preset."""
        for stage, method in PRESETS[parameterNode.preset].items():
            setattr(parameterNode, stage, method)

    @staticmethod
    def warningsText(outputs):
        """The run's warnings (implausible mask, inverted phase sign, ...), one per line, for the panel."""
        warnings = outputs.provenance.get("warnings", []) if outputs is not None else []
        return "\n".join(_("Warning: {text}").format(text=w) for w in warnings)

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

    def echoTimes(self, source, dicom_lookup=None):
        """Echo times (s) from the DICOM attributes of a series, or None."""
        return echo_times.echo_times_s(source, nodes.echo_volume_nodes(source), dicom_lookup)

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

    @staticmethod
    def parseOptions(text):
        """Method options typed as "vsharp.radii_mm=[12,8,4]; tv-admm.lam=2e-4"."""
        options = {}
        for item in [s for s in re.split(r"[;\n]+", text or "") if s.strip()]:
            key, sep, value = item.partition("=")
            method, dot, name = key.strip().partition(".")
            if not sep or not dot:
                raise QSMInputError(f"option '{item.strip()}': write it as METHOD.NAME=VALUE")
            try:
                parsed = json.loads(value.strip())
            except ValueError:
                parsed = value.strip()
            options.setdefault(method, {})[name.strip()] = parsed
        return options

    @staticmethod
    def implausibleMaskQuestion(refusal):
        """The question put to the user when the brain mask fails its plausibility check."""
        check = refusal.check or {}
        problems = "\n".join(f"- {problem}" for problem in check.get("implausible", [])) or str(refusal)
        if check.get("source") == "automatic":
            source, fix = _("The automatic brain mask"), _("choose a brain mask (Brain mask) and apply again")
        else:
            source, fix = _("The selected brain mask"), _("choose the brain mask of this scan and apply again")
        return _("{source} looks implausible:\n{problems}\n\nNo map was written. You can {fix}, or use this "
                 "mask anyway (the warnings are kept in the map's provenance).\n\nUse this mask anyway?").format(
            source=source, problems=problems, fix=fix)

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

    # -- the run --------------------------------------------------------------------------------

    def process(self, magnitude, phase, *, te_s=None, b0_t=None, mask=None, mask_segment_ids=None,
                preset="consensus", unwrap=None, bgremove=None, inversion=None, reference="brain",
                reference_region=None, reference_segment_ids=None, options=None, phase_sign=1,
                output_name=None, outputs=None, progress=None, dicom_lookup=None, accept_implausible_mask=False,
                separation=False, r2=None, r2_unit="R2", threads=None):
        """Reconstruct susceptibility from magnitude and phase nodes.

        Parameters
        ----------
        magnitude, phase : list of vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode or multi-volume node
            The echoes, in echo order. Phase in any scale (radians, DICOM integers, ...).
        te_s : sequence of float, optional
            Echo times in seconds; read from the DICOM attributes when not given.
        b0_t : float, optional
            Field strength in tesla; read from DICOM when not given.
        mask : vtkMRMLLabelMapVolumeNode or vtkMRMLSegmentationNode, optional
            Brain mask (labelmap > 0, or the union of ``mask_segment_ids``, default all
            segments). Computed from the magnitude when missing.
        preset : {"consensus", "fast"}
            Methods for the stages not given explicitly.
        unwrap, bgremove, inversion : str, optional
            Method per stage (see qsmlib.pipeline).
        reference : {"brain", "csf", "none", "region"}
            ``"csf"``: the lateral ventricles found from R2* and magnitude.
        reference_region : labelmap or segmentation node, optional
            For ``reference="region"``.
        options : dict, optional
            Method options, e.g. ``{"vsharp": {"radii_mm": [12, 8, 4]}}``; those of
            the chi-separation under ``"separation"`` (see qsmlib.separation.chi_separation).
        phase_sign : {1, -1}
            -1 for scanners whose phase decreases with field.
        output_name : str, optional
            Base name of the outputs; default: the magnitude's name.
        outputs : ReconstructionOutputs, optional
            Existing nodes to overwrite (None members are created).
        progress : callable(stage, fraction), optional
            For example a :class:`qsmslicer.progress.ProgressAdapter`; may raise Cancelled.
        accept_implausible_mask : bool
            Go on with a brain mask that fails its plausibility check; by default
            :class:`~qsmlib.errors.ImplausibleMaskError` stops the run and no node is written.
        separation : bool
            Also split the susceptibility into its paramagnetic and diamagnetic parts
            (chi-separation, Shin et al. 2021) from the local field and R2* of the echoes.
        r2 : vtkMRMLScalarVolumeNode, optional
            Measured R2 (1/s) or T2 (s) map on the echoes' voxels, for ``separation``;
            without it the R2*-only method takes R2 from a tissue model.
        r2_unit : {"R2", "T2"}
            What ``r2`` holds: R2 in 1/s or T2 in s.
        threads : int, optional
            Threads for the FFTs and BLAS/OpenMP pools; default: the count Slicer's
            own ITK processing uses (:mod:`qsmslicer.threads`). Recorded in the provenance.

        Returns
        -------
        ReconstructionOutputs
            Volumes with the input's IJKToRAS: susceptibility (ppm), local and total field
            (Hz), and the final mask (labelmap); with ``separation`` also chi_pos and
            chi_neg (ppm) and R2' (1/s).
        """
        dependencies.ensure_packages_in_slicer(_("QSM Reconstruction"))
        from qsmlib.io.phase_scaling import phase_to_radians
        from qsmlib.workflow import SEPARATION_UNITS, r2_from_map, separate_result

        if reference not in REFERENCES:
            raise QSMInputError(f"reference '{reference}' is unknown; choose one of {', '.join(REFERENCES)}")
        if phase_sign not in (1, -1):
            raise QSMInputError(f"phase sign {phase_sign}: give 1 or -1")
        if r2_unit not in ("R2", "T2"):
            raise QSMInputError(f"R2 map unit '{r2_unit}': give 'R2' (1/s) or 'T2' (s)")
        options = dict(options or {})
        separation_options = options.pop("separation", None)
        if separation_options is not None and not separation:
            raise QSMInputError("separation options were given, but the separation is not switched on")
        config = PipelineConfig.from_preset(preset, unwrap=unwrap, bgremove=bgremove, inversion=inversion,
                                            reference=reference, options=options,
                                            accept_implausible_mask=accept_implausible_mask)

        magnitude_array, reference_node = nodes.echo_series_array(magnitude, "magnitude")
        phase_array, phase_node = nodes.echo_series_array(phase, "phase")
        nodes.check_same_geometry(phase_node, reference_node, "phase")
        if magnitude_array.shape != phase_array.shape:
            raise QSMInputError(f"magnitude has {magnitude_array.shape[3]} echoes of shape {magnitude_array.shape[:3]} "
                                f"but phase has {phase_array.shape[3]} of shape {phase_array.shape[:3]}")
        echo_nodes = nodes.echo_volume_nodes(magnitude)
        te_source = "given"
        if te_s is None:
            te_s = self.echoTimes(magnitude, dicom_lookup) or self.echoTimes(phase, dicom_lookup)
            te_source = "DICOM attributes"
            if te_s is None:
                raise QSMInputError("echo times: none given and the volumes carry no DICOM echo times; "
                                    "type them in seconds, e.g. 0.004, 0.008, 0.012")
        if b0_t is None:
            b0_t = echo_times.field_strength_t(echo_nodes, dicom_lookup)
            if b0_t is None:
                raise QSMInputError("field strength: none given and no DICOM MagneticFieldStrength; give it in tesla")

        phase_rad, scaling = phase_to_radians(phase_array, name="phase")
        if phase_sign == -1:
            phase_rad = -phase_rad
        del phase_array
        affine = nodes.ijk_to_ras(reference_node)
        mask_array = None if mask is None else nodes.mask_from_node(mask, reference_node, mask_segment_ids)
        region = None
        if reference == "region":
            if reference_region is None:
                raise QSMInputError("reference 'region' needs a reference region (labelmap or segmentation)")
            region = nodes.mask_from_node(reference_region, reference_node, reference_segment_ids)
        r2_values = None
        if separation:
            if magnitude_array.shape[3] < 2:
                raise QSMInputError("chi-separation needs R2*, which needs two echoes or more; one echo was given")
            if r2 is not None:  # checked before the long run, on the map's positive voxels
                nodes.check_same_geometry(r2, reference_node, f"{r2_unit} map")
                r2_values = nodes.array_from_volume(r2, np.float32)
                if not (r2_values > 0).any():
                    raise QSMInputError(f"{r2_unit} map '{r2.GetName()}' has no positive value; "
                                        "give R2 in 1/s or T2 in s")
                r2_from_map(r2_values, is_t2=r2_unit == "T2", mask=r2_values > 0,
                            name=f"{r2_unit} map '{r2.GetName()}'")
        b0_dir = nodes.b0_direction(reference_node)
        with slicer_threads.computation_threads(threads):
            result = reconstruct(magnitude=magnitude_array, phase=phase_rad, te_s=te_s, b0_t=b0_t,
                                 voxel_size=nodes.voxel_size(reference_node), b0_dir=b0_dir, mask=mask_array,
                                 config=config, reference_region=region, progress=progress)
            for warning in result.provenance["warnings"]:
                logging.warning("QSM: %s", warning)
            maps = record = None
            if separation:
                r2_hz = r2_source = None
                if r2 is not None:
                    r2_hz = r2_from_map(r2_values, is_t2=r2_unit == "T2", mask=result.mask,
                                        name=f"{r2_unit} map '{r2.GetName()}'")
                    r2_source = f"{r2_unit} map {r2.GetName()}"
                maps, record = separate_result(result, magnitude_array, te_s, b0_t, nodes.voxel_size(reference_node),
                                               b0_dir=b0_dir, r2_hz=r2_hz, r2_source=r2_source,
                                               options=separation_options, progress=progress)

        provenance = slicer_threads.record(dict(result.provenance), threads)
        provenance["inputs"] = {"magnitude": self._describe(magnitude), "phase": self._describe(phase),
                                "echo_times_s": [float(t) for t in te_s], "echo_times_source": te_source,
                                "b0_t": float(b0_t), "mask": None if mask is None else mask.GetName(),
                                "phase_sign": phase_sign, "preset": preset}
        provenance["detected"] = {"b0_dir": list(b0_dir), "b0_dir_source": "IJKToRAS of the input",
                                  "voxel_size_mm": list(nodes.voxel_size(reference_node)),
                                  "phase_scaling": scaling}
        provenance["units"] = {"chi": "ppm", "total_field": "Hz", "local_field": "Hz"}
        if separation:
            provenance["inputs"]["r2"] = None if r2 is None else {"node": r2.GetName(), "unit": r2_unit}
            provenance["separation"] = record
            provenance["units"].update(SEPARATION_UNITS)
        return self._writeOutputs(result, provenance, affine, output_name or self._baseName(magnitude),
                                  outputs or ReconstructionOutputs(None, None, None, None),
                                  beside=reference_node, scene=self._scene(magnitude, reference_node), maps=maps)

    @staticmethod
    def _scene(source, reference_node):
        owner = source if not isinstance(source, (list, tuple)) else reference_node
        return owner.GetScene() or slicer.mrmlScene

    @staticmethod
    def _describe(source):
        if isinstance(source, (list, tuple)):
            return [node.GetName() for node in source]
        return source.GetName()

    @staticmethod
    def _baseName(source):
        name = source[0].GetName() if isinstance(source, (list, tuple)) else source.GetName()
        # "T2star_e1", "mag echo 1" -> "T2star", "mag"
        return re.sub(r"[\s_-]*(e|echo)[\s_-]*\d+$", "", name, flags=re.IGNORECASE) or name

    def _writeOutputs(self, result, provenance, affine, base, outputs, beside, scene, maps=None):
        chi = nodes.output_volume(scene, f"{base}_QSM", result.chi_ppm, affine,
                                  node=outputs.susceptibility, beside=beside)
        nodes.set_voxel_units(chi, "[ppm]", "ppm")
        display.show_susceptibility(chi)
        chi.SetAttribute(PROVENANCE_ATTRIBUTE, json.dumps(provenance))
        local = nodes.output_volume(scene, f"{base}_LocalField", result.local_field_hz, affine,
                                    node=outputs.local_field, beside=beside)
        nodes.set_voxel_units(local, "Hz")
        display.show_field(local, result.local_field_hz, result.mask)
        total = None
        if result.total_field_hz is not None:
            total_hz = np.where(result.brain_mask, result.total_field_hz, 0).astype(np.float32)
            total = nodes.output_volume(scene, f"{base}_TotalField", total_hz, affine,
                                        node=outputs.total_field, beside=beside)
            nodes.set_voxel_units(total, "Hz")
            display.show_field(total, total_hz, result.brain_mask)
        mask = nodes.output_volume(scene, f"{base}_QSMMask", result.mask.astype(np.uint8), affine,
                                   node=outputs.mask, class_name="vtkMRMLLabelMapVolumeNode", beside=beside)
        written = ReconstructionOutputs(chi, local, total, mask, provenance)
        if maps is not None:
            self._writeSeparation(maps, provenance, affine, base, outputs, written, beside=chi, scene=scene)
        return written

    @staticmethod
    def _writeSeparation(maps, provenance, affine, base, outputs, written, beside, scene):
        """chi_pos, chi_neg (ppm, the susceptibility's display) and R2' (1/s) beside the susceptibility."""
        text = json.dumps(provenance)
        for name, key, given in (("ChiPos", "chi_pos", outputs.chi_pos), ("ChiNeg", "chi_neg", outputs.chi_neg)):
            node = nodes.output_volume(scene, f"{base}_{name}", maps[key], affine, node=given, beside=beside)
            nodes.set_voxel_units(node, "[ppm]", "ppm")
            display.show_susceptibility(node)
            node.SetAttribute(PROVENANCE_ATTRIBUTE, text)
            setattr(written, key, node)
        r2prime = nodes.output_volume(scene, f"{base}_R2Prime", maps["r2prime"], affine, node=outputs.r2prime,
                                      beside=beside)
        nodes.set_voxel_units(r2prime, "/s", "1/s")
        r2prime.SetAttribute(PROVENANCE_ATTRIBUTE, text)
        written.r2prime = r2prime

    # -- sample data ----------------------------------------------------------------------------

    def addSimulatedHead(self, scene=None, voxel_size_mm=2.0, b0_dir=None, seed=0, as_sequence=False):
        """Simulate the multi-echo head (generated locally, no download) into the scene.

        Returns ``(magnitude, phase, truth)``: ``magnitude`` and ``phase`` are lists of
        scalar volumes (one per echo) or, with ``as_sequence``, Sequence nodes indexed
        by EchoTime in ms; ``truth`` is the qsmlib SimulatedGRE with the true maps.
        """
        dependencies.ensure_packages_in_slicer(_("QSM Reconstruction"))
        scene = scene or slicer.mrmlScene
        head = sample_data.simulated_head(voxel_size_mm, b0_dir=b0_dir, seed=seed)
        add = sample_data.add_echo_sequence if as_sequence else sample_data.add_echo_volumes
        return add(scene, head, "Magnitude"), add(scene, head, "Phase"), head


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
