"""SWI on an MRML scene: nodes in, qsmlib.swi.swi, nodes out.

The scene-level half of the SWI module's Logic, shared by the Slicer module
(``SWILogic`` adds the parameter node to it) and the web app, which runs it on a
plain MRML scene of slicer-core. It needs MRML and qsmlib only: no Slicer
application, no Qt, no ``slicer.mrmlScene`` (outputs go to the scene of the
inputs).
"""

import logging
from dataclasses import dataclass

import numpy as np

from qsmlib import swi as qsm_swi
from qsmlib.errors import QSMInputError
from qsmslicer import dependencies, echo_times, nodes
from qsmslicer import threads as slicer_threads
from qsmslicer.i18n import tr as _


@dataclass
class SWIOutputs:
    """The SWI and minimum intensity projection volumes of one run."""

    swi: object
    mip: object


class SwiLogic:
    """Nodes in, qsmlib.swi, nodes out, in the scene of the input nodes. Runs without a GUI."""

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

        if phase_sign not in (1, -1):
            raise QSMInputError(f"phase sign {phase_sign}: give 1 or -1")
        magnitude_array, reference_node = nodes.echo_series_array(magnitude, "magnitude")
        phase_rad, scaling, phase_node = nodes.phase_series_radians(phase)
        nodes.check_same_geometry(phase_node, reference_node, "phase")
        # outputs go to the scene of the selected sequence or volume (a sequence's echoes are in its own)
        scene = nodes.scene_of(reference_node if isinstance(magnitude, (list, tuple)) else magnitude)
        if magnitude_array.shape != phase_rad.shape:
            raise QSMInputError(f"magnitude has shape {magnitude_array.shape} but phase has {phase_rad.shape}")
        if te_s is None and magnitude_array.shape[3] > 1:
            te_s = echo_times.echo_times_s(magnitude, nodes.echo_volume_nodes(magnitude), dicom_lookup)
            if te_s is None:
                raise QSMInputError("echo times: several echoes need echo times; type them in seconds")
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
        swi_node = nodes.output_volume(scene, f"{base}_SWI", result.swi, affine, node=outputs.swi,
                                       beside=reference_node)
        mip_node = nodes.output_volume(scene, f"{base}_mIP", result.mip, affine, node=outputs.mip,
                                       beside=reference_node)
        return SWIOutputs(swi_node, mip_node)
