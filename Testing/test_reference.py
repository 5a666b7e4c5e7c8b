"""Referencing (qsmlib.reference): whole brain, labels, and the automatic CSF reference."""

import numpy as np
import pytest
from scipy import ndimage

from qsmlib.errors import QSMInputError
from qsmlib.reference import (csf_reference_mask, label_region, reference_to_csf, reference_to_labels,
                              reference_to_region, reference_whole_brain)
from qsmlib.relaxometry import r2star_loglinear
from qsmlib.simulation import load_head_phantom, simulate_gre


@pytest.fixture(scope="module")
def head():
    phantom = load_head_phantom(2.0)
    sim = simulate_gre(phantom, snr=50)
    csf_label = phantom.label_of("CSF")
    mask = sim.brain_mask
    true_csf = (sim.labels == csf_label) & mask
    # The lateral ventricles: the face-connected CSF piece of at least 1 mL that lies deepest in the brain.
    pieces, count = ndimage.label(true_csf)
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=sim.voxel_size_mm)[1:-1, 1:-1, 1:-1]
    voxel_ml = np.prod(sim.voxel_size_mm) / 1000
    big = [k for k in range(1, count + 1) if (pieces == k).sum() * voxel_ml >= 1.0]
    ventricles = pieces == max(big, key=lambda k: np.median(depth[pieces == k]))
    return sim, true_csf, ventricles


def test_csf_mask_finds_the_ventricles(head):
    sim, true_csf, ventricles = head
    r2star, _ = r2star_loglinear(sim.magnitude, sim.te_s, sim.brain_mask)
    csf = csf_reference_mask(sim.magnitude, r2star, sim.brain_mask, sim.voxel_size_mm)
    purity = true_csf[csf].mean()
    coverage = (csf & ventricles).sum() / ventricles.sum()
    assert purity > 0.9                      # measured 1.000
    assert coverage > 0.6                    # measured 0.95-1.0 at SNR 50
    assert csf.sum() * 8e-3 > 2.0            # more than 2 mL
    # Referenced to it, the true map has mean 0 in the CSF, and the offset is the CSF value.
    chi_ref, offset = reference_to_csf(sim.chi_ppm, sim.brain_mask, csf)
    assert abs(float(chi_ref[csf].mean())) < 1e-6
    assert offset == pytest.approx(0.019, abs=1e-4)          # the phantom's CSF susceptibility
    assert abs(float(chi_ref[true_csf].mean())) < 2e-3


def test_csf_mask_with_partial_volume(head):
    # Blurring the echoes mixes CSF and tissue decay at the ventricle walls: the mixed voxels
    # get intermediate R2*, and the threshold must leave them out.
    sim, true_csf, ventricles = head
    blurred = np.stack([ndimage.gaussian_filter(sim.magnitude[..., e], 0.5)
                        for e in range(sim.magnitude.shape[3])], axis=-1)
    r2star, _ = r2star_loglinear(blurred, sim.te_s, sim.brain_mask)
    csf = csf_reference_mask(blurred, r2star, sim.brain_mask, sim.voxel_size_mm)
    assert true_csf[csf].mean() > 0.9        # measured 1.000
    assert (csf & ventricles).sum() / ventricles.sum() > 0.3   # measured about 0.5


def test_csf_mask_refuses_bad_input(head):
    sim, _, _ = head
    r2star = np.full(sim.brain_mask.shape, 20.0, np.float32)      # no CSF anywhere
    with pytest.raises(QSMInputError, match="CSF reference"):
        csf_reference_mask(sim.magnitude, r2star, sim.brain_mask, sim.voxel_size_mm)
    with pytest.raises(QSMInputError, match="shape"):
        csf_reference_mask(sim.magnitude[:-1], r2star, sim.brain_mask, sim.voxel_size_mm)
    with pytest.raises(QSMInputError, match="r2star_max_hz"):
        csf_reference_mask(sim.magnitude, r2star, sim.brain_mask, sim.voxel_size_mm, r2star_max_hz=0)
    with pytest.raises(QSMInputError, match="voxel"):
        csf_reference_mask(sim.magnitude, r2star, sim.brain_mask, (2, 2, -1))


def test_region_and_label_references_hand_computed():
    chi = np.zeros((4, 4, 4), np.float32)
    chi[0] = 0.3
    chi[1] = 0.1
    mask = np.ones(chi.shape, bool)
    mask[3] = False
    labels = np.zeros(chi.shape, np.int16)
    labels[0] = 5
    labels[1] = 7
    ref, offset = reference_to_labels(chi, mask, labels, [5, 7])
    assert offset == pytest.approx(0.2, abs=1e-7)
    assert ref[0, 0, 0] == pytest.approx(0.1, abs=1e-7) and ref[3, 0, 0] == 0.0
    ref, offset = reference_whole_brain(chi, mask)
    assert offset == pytest.approx(0.4 / 3, abs=1e-7)
    ref, offset = reference_to_region(chi, mask, labels == 7)
    assert offset == pytest.approx(0.1, abs=1e-7)
    assert np.array_equal(label_region(labels, 5), labels == 5)
    assert chi[0, 0, 0] == np.float32(0.3)              # input unchanged


def test_label_reference_refuses_bad_input():
    chi = np.zeros((4, 4, 4), np.float32)
    mask = np.ones(chi.shape, bool)
    labels = np.zeros(chi.shape, np.int16)
    labels[0] = 2
    with pytest.raises(QSMInputError, match="holds 0, 2"):
        reference_to_labels(chi, mask, labels, [3])
    with pytest.raises(QSMInputError, match="none given"):
        reference_to_labels(chi, mask, labels, [])
    with pytest.raises(QSMInputError, match="same voxel grid"):
        reference_to_labels(chi, mask, labels[:3], [2])
    with pytest.raises(QSMInputError, match="non-integer"):
        reference_to_labels(chi, mask, labels * 0.3, [1])   # 0.6: a probability map
    outside = np.zeros(chi.shape, bool)
    mask[0] = False
    with pytest.raises(QSMInputError, match="does not overlap"):
        reference_to_labels(chi, mask, labels, [2])
    outside[0, 0, 0] = True
    with pytest.raises(QSMInputError, match="does not overlap"):
        reference_to_region(chi, mask, outside)
