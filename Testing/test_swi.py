"""SWI: phase masks, homodyne and field high-pass, echo combination, mIP, and the contrasts on the head."""

import dataclasses

import numpy as np
import pytest
import scipy.ndimage as ndi

from qsmlib import QSMInputError
from qsmlib.constants import hz_per_ppm
from qsmlib.dipole import dipole_convolve
from qsmlib.fieldmap import fit_multi_echo_field
from qsmlib.io import load_multi_echo
from qsmlib.masking import brain_mask
from qsmlib.simulation import load_head_phantom, simulate_gre
from qsmlib.simulation.phantom import DEEP_GREY_MATTER, Tissue
from qsmlib.swi import (combine_echoes, highpass_field, homodyne_highpass, minimum_intensity_projection,
                        mip_slices, phase_mask, sensitivity_correction, swi, swi_from_field)

ROMEO = ("romeo-small", [0.004, 0.008, 0.012])
WM, BLOOD, CALCIFICATION = 8, 11, 16
#: A partly calcified region: a tenth of pure calcification's -3.3 ppm, with
#: signal left (pure calcification has none, so its phase cannot be measured).
CALCIFICATION_TISSUE = Tissue("Calcification", -0.3, 60.0, 0.6)


# --- phase masks ------------------------------------------------------------------------------

def test_phase_masks_follow_haacke_formulas_in_both_conventions():
    phase = np.linspace(-4.0, 4.0, 81, dtype=np.float32)   # right-handed phase, beyond +-pi too
    expected = {
        "negative": np.where(phase < 0, np.clip((np.pi + phase) / np.pi, 0, 1), 1),
        "positive": np.where(phase > 0, np.clip((np.pi - phase) / np.pi, 0, 1), 1),
        "symmetric": np.clip((np.pi - np.abs(phase)) / np.pi, 0, 1),
    }
    for kind, values in expected.items():
        right = phase_mask(phase, kind=kind, phase_convention="right-handed")
        left = phase_mask(-phase, kind=kind)                   # default: left-handed = QSMLib's +2 pi f TE
        assert right.dtype == np.float32
        np.testing.assert_allclose(right, values, atol=1e-6)
        np.testing.assert_allclose(left, values, atol=1e-6)
    # QSMLib phase +1 rad (paramagnetic): the negative mask darkens, the positive one does not.
    assert phase_mask(np.float32([1.0]))[0] == pytest.approx((np.pi - 1) / np.pi, abs=1e-6)
    assert phase_mask(np.float32([1.0]), kind="positive")[0] == 1.0


# --- high-pass filters ------------------------------------------------------------------------

def _grid(shape):
    return np.indices(shape, dtype=np.float32)


def test_homodyne_removes_plane_waves_and_keeps_a_small_source():
    shape = (48, 40, 32)
    i, j, k = _grid(shape)
    # An offset and a plane wave of whole cycles over the field of view (3 wraps along i),
    # slow enough to lie inside the 16-sample window (frequencies under 8 cycles).
    background = 0.7 + 2 * np.pi * (3 * i / shape[0] - 2 * k / shape[2])
    blob = np.exp(-((i - 24) ** 2 + (j - 20) ** 2 + (k - 16) ** 2) / (2 * 1.2 ** 2))
    magnitude = np.ones(shape, np.float32)
    wrapped = np.angle(np.exp(1j * (background + blob))).astype(np.float32)
    highpassed = homodyne_highpass(magnitude, wrapped, filter_size=16)
    assert highpassed.dtype == np.float32 and highpassed.shape == shape
    # The plane wave alone is removed exactly (it is an eigenvector of the filter).
    only_wave = homodyne_highpass(magnitude, np.angle(np.exp(1j * background)).astype(np.float32))
    assert np.max(np.abs(only_wave)) < 1e-4
    # The 1 rad source keeps most of its phase; far from it nothing is left.
    assert 0.75 < highpassed[24, 20, 16] < 1.0
    far = np.sqrt((i - 24) ** 2 + (j - 20) ** 2 + (k - 16) ** 2) > 10
    assert np.max(np.abs(highpassed[far])) < 0.02
    # 4D input: echo by echo.
    stacked = homodyne_highpass(np.stack([magnitude] * 2, 3), np.stack([wrapped] * 2, 3), filter_size=16)
    np.testing.assert_allclose(stacked[..., 1], highpassed, atol=1e-6)
    # An unfiltered axis (2D per-slice filtering along k) leaves a k-only phase untouched.
    slice_phase = np.broadcast_to(np.float32(0.3) * k / 32, shape).astype(np.float32)
    per_slice = homodyne_highpass(magnitude, slice_phase, filter_size=(16, 16, None))
    assert np.max(np.abs(per_slice)) < 1e-5


def test_field_highpass_removes_constant_and_linear_fields_inside_the_mask():
    shape = (40, 40, 40)
    i, j, k = _grid(shape)
    ball = (i - 20) ** 2 + (j - 20) ** 2 + (k - 20) ** 2 < 17 ** 2
    constant = highpass_field(np.full(shape, 5.0, np.float32), ball, (1, 1, 1), sigma_mm=2.0)
    assert np.max(np.abs(constant)) < 1e-4 and np.all(constant[~ball] == 0)
    # A linear field (+-60): the symmetric Gaussian leaves nothing 4.5 SD inside the edge.
    linear = highpass_field(3.0 * i - 2.0 * k, ball, (1, 1, 1), sigma_mm=2.0)
    deep = (i - 20) ** 2 + (j - 20) ** 2 + (k - 20) ** 2 < 8 ** 2
    assert np.max(np.abs(linear[deep])) < 2e-3
    # No filter: the masked field itself.
    np.testing.assert_array_equal(highpass_field(i, ball, (1, 1, 1), sigma_mm=None), np.where(ball, i, 0))


# --- echo combination, mIP and sensitivity ----------------------------------------------------

def test_echo_combinations_have_their_closed_forms():
    rng = np.random.default_rng(0)
    magnitude = rng.uniform(0.1, 2.0, (5, 4, 3, 3)).astype(np.float32)
    te = np.array([0.005, 0.012, 0.02])
    m = magnitude.astype(np.float64)
    np.testing.assert_allclose(combine_echoes(magnitude, method="rss"), np.sqrt((m ** 2).sum(3)), rtol=1e-5)
    np.testing.assert_allclose(combine_echoes(magnitude, method="snr"), (m ** 2).sum(3) / m.sum(3), rtol=1e-5)
    np.testing.assert_allclose(combine_echoes(magnitude, te), (te * m ** 2).sum(3) / (te * m).sum(3), rtol=1e-5)
    np.testing.assert_array_equal(combine_echoes(magnitude, method=1), magnitude[..., 1])
    # Equal echoes: the weighted means give the echo back, RSS sqrt(3) times it.
    flat = np.repeat(magnitude[..., :1], 3, axis=3)
    np.testing.assert_allclose(combine_echoes(flat, te), magnitude[..., 0], rtol=1e-6)
    np.testing.assert_allclose(combine_echoes(flat, method="rss"), np.sqrt(3) * magnitude[..., 0], rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mip_is_a_centred_sliding_minimum_over_the_slab(axis):
    rng = np.random.default_rng(axis)
    image = rng.random((12, 10, 9)).astype(np.float32)
    voxel_size = (0.5, 1.0, 2.0)
    slab_mm = 5.0
    n = mip_slices(slab_mm, voxel_size[axis])
    assert n == {0: 11, 1: 5, 2: 3}[axis]         # nearest odd count to 10, 5 and 2.5 slices
    mip = minimum_intensity_projection(image, voxel_size, slab_mm=slab_mm, axis=axis)
    moved = np.moveaxis(image, axis, 0)
    expected = np.stack([moved[max(0, s - n // 2):s + n // 2 + 1].min(axis=0) for s in range(moved.shape[0])])
    np.testing.assert_array_equal(mip, np.moveaxis(expected, 0, axis))
    np.testing.assert_array_equal(minimum_intensity_projection(image, voxel_size, slab_mm=0.1, axis=axis), image)


def test_sensitivity_correction_removes_a_smooth_gain():
    shape = (40, 40, 40)
    i, j, k = _grid(shape)
    ball = (i - 20) ** 2 + (j - 20) ** 2 + (k - 20) ** 2 < 17 ** 2
    gain = 1 + 0.3 * (i - 20) / 20                       # linear receive gain
    corrected = sensitivity_correction(np.where(ball, 2.0 * gain, 0), ball, (1, 1, 1), sigma_mm=3.0)
    deep = (i - 20) ** 2 + (j - 20) ** 2 + (k - 20) ** 2 < 8 ** 2
    assert np.ptp(corrected[deep]) / np.mean(corrected[deep]) < 0.01
    assert abs(np.median(corrected[deep]) - 2.0) < 0.05


# --- SWI of a vein and a calcification: cylinders along B0 ----------------------------------

def _cylinder_scan(chi_ppm, te=(0.005, 0.012, 0.02), b0_t=3.0):
    """Magnitude and left-handed phase of a cylinder along B0 (its inner field is chi/3)."""
    shape = (48, 48, 48)
    i, j, _ = _grid(shape)
    cylinder = ((i - 24) ** 2 + (j - 24) ** 2 <= 2.5 ** 2)
    cylinder[:, :, :6] = cylinder[:, :, -6:] = False
    field_hz = dipole_convolve(np.where(cylinder, np.float32(chi_ppm), 0), (1, 1, 1), (0, 0, 1)) * hz_per_ppm(b0_t)
    phase = np.stack([np.angle(np.exp(2j * np.pi * field_hz * t)) for t in te], 3).astype(np.float32)
    magnitude = np.ones(phase.shape, np.float32)
    inside = cylinder.copy()
    inside[:, :, :18] = inside[:, :, 30:] = False        # the middle, away from the ends
    return magnitude, phase, np.array(te), field_hz, inside


@pytest.mark.parametrize("chi_ppm, darkening", [(0.2, "negative"), (-0.2, "positive")])
def test_cylinder_along_b0_darkens_only_with_the_mask_of_its_sign(chi_ppm, darkening):
    magnitude, phase, te, field_hz, inside = _cylinder_scan(chi_ppm)
    other = "positive" if darkening == "negative" else "negative"
    # The inner field of a long cylinder along B0 is chi / 3 (Lorentz-corrected).
    expected_hz = chi_ppm / 3 * hz_per_ppm(3.0)
    assert np.median(field_hz[inside]) == pytest.approx(expected_hz, rel=0.05)
    dark = swi(magnitude, phase, None, (1, 1, 1), te_s=te, kind=darkening, filter_size=12)
    light = swi(magnitude, phase, None, (1, 1, 1), te_s=te, kind=other, filter_size=12)
    # Phase at the last echo of about 2 pi * 8.5 Hz * 20 ms = 1.07 rad: mask ((pi - 1.07) / pi)^4 = 0.19,
    # a little weaker after the homodyne filter.
    assert np.median(dark.swi[inside]) < 0.35
    assert np.median(light.swi[inside]) > 0.97
    # Right-handed data (phase flipped) with the right-handed option: the same image.
    flipped = swi(magnitude, -phase, None, (1, 1, 1), te_s=te, kind=darkening, filter_size=12,
                  phase_convention="right-handed")
    np.testing.assert_allclose(flipped.swi, dark.swi, atol=1e-6)
    # From the field map without a high-pass: the mask of the exact inner phase at the last echo.
    mask = np.ones(field_hz.shape, bool)
    exact = swi_from_field(magnitude, field_hz, mask, (1, 1, 1), te_s=te, kind=darkening, highpass_sigma_mm=None)
    phi = 2 * np.pi * np.abs(field_hz[inside]) * te[-1]
    np.testing.assert_allclose(exact.phase_mask[inside], ((np.pi - phi) / np.pi) ** 4, atol=1e-5)


# --- The simulated head: veins, deep grey matter, a calcification ------------------------------

@pytest.fixture(scope="module")
def head():
    """The 1.5 mm head at SNR 100 with a partly calcified cylinder (along B0) in deep white matter."""
    phantom = load_head_phantom(1.5)
    labels = phantom.labels.copy()
    white = (labels == WM) & phantom.brain_mask
    depth = ndi.distance_transform_edt(white)
    centre = np.unravel_index(np.argmax(depth), depth.shape)
    i, j, k = np.indices(labels.shape)
    cylinder = ((i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= 4) & (np.abs(k - centre[2]) <= 5)
    assert white[cylinder].all()
    labels[cylinder] = CALCIFICATION
    tissues = dict(phantom.tissues)
    tissues[CALCIFICATION] = CALCIFICATION_TISSUE
    sim = simulate_gre(dataclasses.replace(phantom, labels=labels, tissues=tissues), snr=100)
    white = (sim.labels == WM) & sim.brain_mask
    veins = (sim.labels == BLOOD) & sim.brain_mask & ndi.binary_dilation(white, iterations=2)
    return sim, veins


def _against_white_matter(image, region, sim):
    """Mean of ``image`` in ``region`` over its mean in the white matter within 3 voxels around it."""
    ring = ndi.binary_dilation(region, iterations=3) & ~region & (sim.labels == WM) & sim.brain_mask
    return float(image[region].mean() / image[ring].mean())


def test_swi_darkens_veins_and_iron_rich_nuclei_against_white_matter(head):
    sim, veins = head
    assert veins.sum() > 200                              # veins inside the parenchyma
    result = swi(sim.magnitude, sim.phase, sim.brain_mask, sim.voxel_size_mm, te_s=sim.te_s)
    vein_swi = _against_white_matter(result.swi, veins, sim)
    vein_magnitude = _against_white_matter(result.magnitude, veins, sim)
    # Measured 0.80 against 0.98: the darkening is the phase's.
    assert vein_swi < 0.87
    assert vein_magnitude - vein_swi > 0.1
    for name, limit in (("GP", 0.95), ("SNandSTN", 0.85), ("RN", 1.0)):   # measured 0.92, 0.78, 0.95
        nucleus = (sim.labels == DEEP_GREY_MATTER[name]) & sim.brain_mask
        assert _against_white_matter(result.swi, nucleus, sim) < limit, name
    # The mIP keeps the veins dark and never brightens anything.
    assert np.all(result.mip <= result.swi)
    assert _against_white_matter(result.mip, veins, sim) < vein_swi
    # The wrong phase convention weakens the vein contrast (measured 0.92).
    wrong = swi(sim.magnitude, sim.phase, sim.brain_mask, sim.voxel_size_mm, te_s=sim.te_s,
                phase_convention="right-handed")
    assert _against_white_matter(wrong.swi, veins, sim) > vein_swi + 0.05
    # CLEAR-SWI style, from the true local field: veins dark as well.
    local_hz = sim.local_field_ppm * hz_per_ppm(sim.b0_t)
    clear = swi_from_field(sim.magnitude, local_hz, sim.brain_mask, sim.voxel_size_mm, te_s=sim.te_s)
    assert _against_white_matter(clear.swi, veins, sim) < 0.87


def test_calcification_darkens_only_with_the_positive_mask(head):
    sim, _ = head
    calcification = sim.labels == CALCIFICATION
    weights = {kind: swi(sim.magnitude, sim.phase, sim.brain_mask, sim.voxel_size_mm, te_s=sim.te_s,
                         kind=kind).phase_mask for kind in ("negative", "positive")}
    # Mean phase weighting inside: measured 0.25 (positive) and 0.98 (negative).
    assert weights["positive"][calcification].mean() < 0.4
    assert weights["negative"][calcification].mean() > 0.93


# --- The real scan -------------------------------------------------------------------------------

def test_swi_on_the_real_scan_is_finite_inside_the_mask(test_data):
    folder, te = ROMEO
    data = load_multi_echo([test_data / folder / "Mag.nii.gz"], [test_data / folder / "Phase.nii.gz"],
                           te, 3.0)
    assert "radians" not in data.phase_scaling["detected"]          # scanner units, rescaled
    pi = np.float32(np.pi)  # [-pi, pi) in the float32 of the phase (wrap_to_pi's contract)
    assert data.phase.dtype == np.float32 and data.phase.min() >= -pi and data.phase.max() < pi
    mask = brain_mask(data.magnitude, data.voxel_size)
    field_hz = fit_multi_echo_field(data.magnitude, data.phase, data.te_s, mask, data.voxel_size).field_hz
    for result in (swi(data.magnitude, data.phase, mask, data.voxel_size, te_s=data.te_s),
                   swi_from_field(data.magnitude, field_hz, mask, data.voxel_size, te_s=data.te_s)):
        assert np.all(np.isfinite(result.swi[mask])) and np.all(np.isfinite(result.mip[mask]))
        assert np.all(result.swi[mask] <= result.magnitude[mask] + 1e-12)
        assert np.median(result.swi[mask]) > 0
    # The phase weighting is active: some voxels darken by more than half.
    classic = swi(data.magnitude, data.phase, mask, data.voxel_size, te_s=data.te_s)
    assert np.mean(classic.phase_mask[mask] < 0.5) > 0.001


# --- Bad input ----------------------------------------------------------------------------------

def test_invalid_inputs_raise_clear_errors():
    magnitude = np.ones((8, 8, 8, 2), np.float32)
    phase = np.zeros((8, 8, 8, 2), np.float32)
    te = [0.005, 0.01]
    with pytest.raises(QSMInputError, match="same voxels and echoes"):
        swi(magnitude, phase[..., :1], None, (1, 1, 1), te_s=te)
    with pytest.raises(QSMInputError, match="echo times"):
        swi(magnitude, phase, None, (1, 1, 1))
    with pytest.raises(QSMInputError, match="2 echo times given for 3 echoes|echo times given"):
        swi(np.ones((8, 8, 8, 3)), np.zeros((8, 8, 8, 3)), None, (1, 1, 1), te_s=te)
    with pytest.raises(QSMInputError, match="milliseconds"):
        swi(magnitude, phase, None, (1, 1, 1), te_s=[5, 10])
    with pytest.raises(QSMInputError, match="kind"):
        swi(magnitude, phase, None, (1, 1, 1), te_s=te, kind="venous")
    with pytest.raises(QSMInputError, match="phase_convention"):
        phase_mask(phase, phase_convention="clockwise")
    with pytest.raises(QSMInputError, match="filter_size"):
        homodyne_highpass(magnitude, phase, filter_size=2.5)
    with pytest.raises(QSMInputError, match="mip_axis"):
        swi(magnitude, phase, None, (1, 1, 1), te_s=te, mip_axis=3)
    with pytest.raises(QSMInputError, match="negative"):
        swi(-magnitude, phase, None, (1, 1, 1), te_s=te)
    with pytest.raises(QSMInputError, match="needs a brain mask"):
        swi(magnitude, phase, None, (1, 1, 1), te_s=te, sensitivity_sigma_mm=7)
    with pytest.raises(QSMInputError, match="te_ref_s"):
        swi_from_field(magnitude[..., 0], phase[..., 0], np.ones((8, 8, 8), bool), (1, 1, 1))
