"""SWI Logic on real MRML nodes from slicer-core: the simulated head, veins darker than tissue."""

import numpy as np
import pytest

import slicer_support

from qsmlib import QSMInputError
from qsmlib.simulation import load_head_phantom
from qsmslicer import nodes
from QSMReconstruction import QSMReconstructionLogic
from SWI import SWILogic


@pytest.fixture(scope="module")
def head():
    context = slicer_support.SceneLogics()
    magnitude, phase, truth = QSMReconstructionLogic().addSimulatedHead(context.scene, voxel_size_mm=2.0)
    return context, magnitude, phase, truth


def test_swi_and_mip_are_finite_and_darker_in_veins(head):
    _context, magnitude, phase, truth = head
    outputs = SWILogic().process(magnitude, phase, te_s=list(truth.te_s), slab_mm=8.0)
    swi = nodes.array_from_volume(outputs.swi)
    mip = nodes.array_from_volume(outputs.mip)
    for node in (outputs.swi, outputs.mip):
        np.testing.assert_array_equal(nodes.ijk_to_ras(node), truth.affine)
    assert swi.shape == truth.chi_ppm.shape and np.all(np.isfinite(swi)) and np.all(np.isfinite(mip))
    assert np.all(mip <= swi + 1e-6)  # a minimum over a slab that includes the voxel
    phantom = load_head_phantom(2.0)
    veins = truth.labels == phantom.label_of("Blood")
    white = truth.labels == phantom.label_of("WM")
    assert veins.sum() > 50
    # relative to the combined magnitude, SWI darkens venous blood far more than white matter
    combined = np.sqrt(np.mean(truth.magnitude ** 2, axis=-1))
    ratio_veins = np.median(swi[veins] / np.maximum(combined[veins], 1e-6))
    ratio_white = np.median(swi[white] / np.maximum(combined[white], 1e-6))
    assert ratio_veins < 0.9 * ratio_white, (ratio_veins, ratio_white)
    assert outputs.swi.GetName() == "SimulatedHead_Magnitude_e1_SWI"
    assert SWILogic.projectionAxis(magnitude[0]) == 2


def test_swi_needs_echo_times_for_several_echoes(head):
    _context, magnitude, phase, _truth = head
    with pytest.raises(QSMInputError, match="echo times"):
        SWILogic().process(magnitude, phase)
