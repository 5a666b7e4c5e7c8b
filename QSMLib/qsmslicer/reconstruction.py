"""Reconstruction on an MRML scene: nodes in, qsmlib.pipeline.reconstruct, nodes out.

The scene-level half of QSM Reconstruction's Logic, shared by the Slicer module
(``QSMReconstructionLogic`` adds the parameter node to it) and the web app, which
runs it on a plain MRML scene of slicer-core. It needs MRML and qsmlib only: no
Slicer application, no Qt, no ``slicer.mrmlScene`` (outputs go to the scene of
the inputs).
"""

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from qsmlib.errors import QSMInputError
from qsmlib.pipeline import PipelineConfig, reconstruct
from qsmslicer import dependencies, display, echo_times, nodes, sample_data
from qsmslicer import threads as slicer_threads
from qsmslicer.i18n import tr as _

REFERENCES = ("brain", "csf", "none", "region")
PROVENANCE_ATTRIBUTE = "QSM.Provenance"


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


class ReconstructionLogic:
    """Nodes in, qsmlib, nodes out, in the scene of the input nodes. Runs without a GUI."""

    @staticmethod
    def warningsText(outputs):
        """The run's warnings (implausible mask, inverted phase sign, ...), one per line, for the panel."""
        warnings = outputs.provenance.get("warnings", []) if outputs is not None else []
        return "\n".join(_("Warning: {text}").format(text=w) for w in warnings)

    def echoTimes(self, source, dicom_lookup=None):
        """Echo times (s) from the DICOM attributes of a series, or None."""
        return echo_times.echo_times_s(source, nodes.echo_volume_nodes(source), dicom_lookup)

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
        phase_rad, scaling, phase_node = nodes.phase_series_radians(phase)
        nodes.check_same_geometry(phase_node, reference_node, "phase")
        scene = self._scene(magnitude, reference_node)  # before the long run: a node in no scene fails here
        if magnitude_array.shape != phase_rad.shape:
            raise QSMInputError(f"magnitude has {magnitude_array.shape[3]} echoes of shape {magnitude_array.shape[:3]} "
                                f"but phase has {phase_rad.shape[3]} of shape {phase_rad.shape[:3]}")
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

        if phase_sign == -1:
            phase_rad = -phase_rad
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
                                  beside=reference_node, scene=scene, maps=maps)

    @staticmethod
    def _scene(source, reference_node):
        """Where the outputs go: the scene of the selected sequence or volume (a sequence's echoes are in its own)."""
        return nodes.scene_of(source if not isinstance(source, (list, tuple)) else reference_node)

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

    def addSimulatedHead(self, scene, voxel_size_mm=2.0, b0_dir=None, seed=0, as_sequence=False):
        """Simulate the multi-echo head (generated locally, no download) into ``scene``.

        Returns ``(magnitude, phase, truth)``: ``magnitude`` and ``phase`` are lists of
        scalar volumes (one per echo) or, with ``as_sequence``, Sequence nodes indexed
        by EchoTime in ms; ``truth`` is the qsmlib SimulatedGRE with the true maps.
        """
        dependencies.ensure_packages_in_slicer(_("QSM Reconstruction"))
        head = sample_data.simulated_head(voxel_size_mm, b0_dir=b0_dir, seed=seed)
        add = sample_data.add_echo_sequence if as_sequence else sample_data.add_echo_volumes
        return add(scene, head, "Magnitude"), add(scene, head, "Phase"), head

