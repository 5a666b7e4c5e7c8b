"""Background field removal: SMV kernel and every method (SHARP, V-SHARP, RESHARP, iSMV,
LBV, PDF) against known answers.

The phantom is an ellipsoidal "brain" holding two small spheres of 0.1 and
-0.05 ppm (the local sources), next to an air-like sphere of +9 ppm outside
it (the background source, whose field is harmonic inside the brain). The
true local field is the dipole field of the local sources alone. A constant
offset is not identifiable, so errors are measured after removing the mean
inside each method's output mask.
"""

import importlib

import numpy as np
import pytest
from scipy import ndimage

from qsmlib import Cancelled, QSMInputError
from qsmlib.bgremove import ismv, lbv, pdf, resharp, sharp, vsharp
from qsmlib.bgremove.smv import smv_filter, smv_kernel, truncated_inverse
from qsmlib.masking import erode_mask, sphere_padded_shape, sphere_structure
from qsmlib.bgremove.vsharp import default_radii_mm
from qsmlib.dipole import dipole_convolve

SHAPE = (64, 64, 64)
VOXEL = (1.0, 1.0, 1.0)
B0 = (0.0, 0.0, 1.0)


def _grid(shape):
    return np.meshgrid(*[np.arange(n) - n / 2 + 0.5 for n in shape], indexing="ij")


def _phantom(b0_dir=B0):
    x, y, z = _grid(SHAPE)
    mask = (x / 26) ** 2 + (y / 22) ** 2 + (z / 20) ** 2 < 1
    chi_local = np.zeros(SHAPE, dtype=np.float32)
    chi_local[(x - 7) ** 2 + (y - 4) ** 2 + (z - 2) ** 2 < 25] = 0.1
    chi_local[(x + 8) ** 2 + (y + 5) ** 2 + (z + 3) ** 2 < 16] = -0.05
    air = x ** 2 + y ** 2 + (z - 29) ** 2 < 49  # 2 voxels above the brain
    assert not (air & mask).any()
    chi_background = np.where(air, np.float32(9.0), np.float32(0.0))
    local = dipole_convolve(chi_local, VOXEL, b0_dir)
    background = dipole_convolve(chi_background, VOXEL, b0_dir)
    return mask, local, background


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


def _rms_demeaned(values):
    values = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean((values - values.mean()) ** 2)))


def _errors(estimate, mask_out, local, background):
    """Error RMS (mean removed) relative to the background RMS and to the local-field RMS."""
    error = _rms_demeaned(estimate[mask_out] - local[mask_out])
    return error / _rms_demeaned(background[mask_out]), error / _rms_demeaned(local[mask_out])


def _ball(voxel_size, radius_mm):
    """Sphere structuring element built independently of qsmlib."""
    half = [int(radius_mm / d + 1e-6) for d in voxel_size]
    axes = [np.arange(-h, h + 1) * d for h, d in zip(half, voxel_size)]
    dx, dy, dz = np.meshgrid(*axes, indexing="ij")
    return dx ** 2 + dy ** 2 + dz ** 2 <= radius_mm ** 2 + 1e-9


# --------------------------------------------------------------------- SMV kernel

def test_smv_kernel_matches_direct_fourier_sum_and_is_cached():
    shape, voxel, radius = (24, 20, 18), (1.0, 1.25, 1.5), 3.1
    kernel = smv_kernel(shape, voxel, radius)
    assert kernel.dtype == np.float32
    assert kernel.shape == (24, 20, 10)
    assert smv_kernel(shape, voxel, radius) is kernel
    offsets = np.argwhere(_ball(voxel, radius)) - np.array(_ball(voxel, radius).shape) // 2
    for k in [(0, 0, 0), (1, 0, 0), (0, 3, 2), (5, 7, 9), (23, 19, 4)]:
        phase = 2 * np.pi * (offsets @ (np.array(k) / np.array(shape)))
        assert kernel[k] == pytest.approx(np.mean(np.cos(phase)), abs=1e-6)
    assert kernel[0, 0, 0] == pytest.approx(1.0, abs=1e-6)


def test_smv_of_harmonic_polynomials_is_exact_and_of_r2_is_its_sphere_mean():
    shape, radius = (40, 40, 40), 4.0
    x, y, z = [a.astype(np.float64) for a in _grid(shape)]
    padded = sphere_padded_shape(shape, VOXEL, radius)
    kernel = smv_kernel(padded, VOXEL, radius)
    inner = (slice(8, 32),) * 3  # spheres there do not reach the volume's edge
    for harmonic in (2 * x - y + 0.5 * z, x * y - 3 * y * z, x ** 2 - z ** 2, x * y * z,
                     x ** 3 - 3 * x * y ** 2):
        mean = smv_filter(harmonic.astype(np.float32), kernel, padded)
        scale = np.abs(harmonic[inner]).max()
        np.testing.assert_allclose(mean[inner], harmonic[inner], atol=2e-5 * scale)
    # |r|^2 is not harmonic: its SMV exceeds it by the mean of |p|^2 over the sphere.
    offsets = np.argwhere(_ball(VOXEL, radius)) - 4
    r2 = (x ** 2 + y ** 2 + z ** 2).astype(np.float32)
    mean = smv_filter(r2, kernel, padded)
    np.testing.assert_allclose(mean[inner] - r2[inner], np.mean(np.sum(offsets ** 2, axis=1)),
                               atol=2e-3)


@pytest.mark.parametrize("voxel, radius", [((1.0, 1.0, 1.0), 4.0), ((1.0, 0.8, 1.5), 3.2),
                                           ((1.0, 1.0, 1.0), 1.0)])
def test_smv_erosion_equals_morphological_erosion_by_a_sphere(voxel, radius):
    rng = np.random.default_rng(3)
    x, y, z = _grid((36, 40, 30))
    mask = (x / 16) ** 2 + (y / 17) ** 2 + (z / 12) ** 2 < 1
    mask |= ndimage.binary_dilation(rng.random(mask.shape) > 0.995, iterations=2)
    mask[:, :, :3] = True  # touches the edge of the volume
    expected = ndimage.binary_erosion(mask, structure=_ball(voxel, radius), border_value=0)
    np.testing.assert_array_equal(sphere_structure(voxel, radius), _ball(voxel, radius))
    eroded = erode_mask(mask, voxel, radius)
    assert eroded.sum() > 1000
    np.testing.assert_array_equal(eroded, expected)


def test_truncated_inverse_zeroes_low_frequencies_only():
    kernel = smv_kernel((32, 32, 32), VOXEL, 5.0)
    inverse = truncated_inverse(kernel, 0.05)
    low = np.abs(1.0 - kernel) < 0.05
    assert inverse[0, 0, 0] == 0.0
    assert np.all(inverse[low] == 0.0)
    np.testing.assert_allclose(inverse[~low] * (1.0 - kernel[~low]), 1.0, rtol=1e-5)


# --------------------------------------------------------------------- known answers

# Measured on this phantom, as error RMS relative to the background RMS / to
# the local-field RMS in the output mask / to the local-field RMS 6 voxels
# inside the brain (fraction of the mask kept): SHARP 0.8 % / 9 % / 9 % (40 %,
# its mask is eroded by 6 mm), V-SHARP 1.3 % / 37 % / 28 % (89 %), PDF 0.9 % /
# 34 % / 11 % (100 %), LBV 0.9 % / 26 % / 11 % (89 %), iSMV 0.7 % / 12 % / 9 %
# (58 %, 4 mm sphere), RESHARP 1.4 % / 23 % / 17 % (58 %). The methods that
# keep the voxels near the edge are least exact there.
CASES = {
    "sharp": (lambda f, m: sharp(f, m, VOXEL), 0.015, 0.15, 0.15),
    "vsharp": (lambda f, m: vsharp(f, m, VOXEL), 0.02, 0.40, 0.30),
    "pdf": (lambda f, m: pdf(f, m, VOXEL, b0_dir=B0), 0.02, 0.45, 0.17),
    "lbv": (lambda f, m: lbv(f, m, VOXEL), 0.012, 0.33, 0.14),
    "ismv": (lambda f, m: ismv(f, m, VOXEL), 0.01, 0.16, 0.12),
    "resharp": (lambda f, m: resharp(f, m, VOXEL), 0.018, 0.30, 0.22),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_local_field_is_recovered_from_a_strong_background(phantom, name):
    method, max_vs_background, max_vs_local, max_vs_local_inside = CASES[name]
    mask, local, background = phantom
    field = local + background
    estimate, mask_out = method(field, mask)
    assert estimate.dtype == np.float32 and mask_out.dtype == bool
    assert np.all(estimate[~mask_out] == 0)
    assert np.all(mask_out <= mask)
    vs_background, vs_local = _errors(estimate, mask_out, local, background)
    assert vs_background < max_vs_background
    assert vs_local < max_vs_local
    # The background is over 10 times stronger than the local field here too.
    assert _rms_demeaned(background[mask_out]) > 10 * _rms_demeaned(local[mask_out])
    inside = mask_out & ndimage.binary_erosion(mask, iterations=6)
    error_inside = _rms_demeaned(estimate[inside] - local[inside])
    assert error_inside < max_vs_local_inside * _rms_demeaned(local[inside])


@pytest.mark.parametrize("name", sorted(CASES))
def test_purely_harmonic_field_gives_zero_local_field(phantom, name):
    method = CASES[name][0]
    mask, _, background = phantom
    estimate, mask_out = method(background, mask)
    assert _rms_demeaned(estimate[mask_out]) < 0.012 * _rms_demeaned(background[mask_out])


@pytest.mark.parametrize("name", sorted(CASES))
def test_methods_are_unit_agnostic_and_leave_inputs_alone(phantom, name):
    method = CASES[name][0]
    mask, local, background = phantom
    field_ppm = local + background
    field_ppm_copy, mask_copy = field_ppm.copy(), mask.copy()
    local_ppm, mask_ppm = method(field_ppm, mask)
    # 128 Hz per ppm, about 3 T's 127.7: a power of two scales every float exactly, so an iterative method
    # (PDF's float32 CGLS) takes the same path in both units. With 127.7 the input's rounding, amplified by
    # CGLS, moved PDF's result by 0.6 % of its maximum on one CPU and less on another.
    hz_per_ppm = np.float32(128.0)
    local_hz, mask_hz = method(field_ppm * hz_per_ppm, mask)
    np.testing.assert_array_equal(field_ppm, field_ppm_copy)
    np.testing.assert_array_equal(mask, mask_copy)
    np.testing.assert_array_equal(mask_hz, mask_ppm)
    np.testing.assert_allclose(local_hz, local_ppm * hz_per_ppm,
                               atol=1e-3 * np.abs(local_hz).max())


def test_sharp_erodes_by_its_sphere(phantom):
    mask, local, background = phantom
    _, mask_out = sharp(local + background, mask, VOXEL, radius_mm=5.0)
    expected = ndimage.binary_erosion(mask, structure=_ball(VOXEL, 5.0), border_value=0)
    np.testing.assert_array_equal(mask_out, expected)


def test_vsharp_erodes_by_its_smallest_sphere_and_one_radius_is_sharp(phantom):
    mask, local, background = phantom
    field = local + background
    _, mask_out = vsharp(field, mask, VOXEL, radii_mm=(8.0, 2.0, 5.0))
    expected = ndimage.binary_erosion(mask, structure=_ball(VOXEL, 2.0), border_value=0)
    np.testing.assert_array_equal(mask_out, expected)
    one_radius, one_mask = vsharp(field, mask, VOXEL, radii_mm=[6.0], threshold=0.03)
    sharp_local, sharp_mask = sharp(field, mask, VOXEL, radius_mm=6.0, threshold=0.03)
    np.testing.assert_array_equal(one_mask, sharp_mask)
    np.testing.assert_allclose(one_radius, sharp_local, atol=1e-6 * np.abs(field).max())


def test_vsharp_default_radii_run_from_18_mm_to_one_voxel():
    assert default_radii_mm((1.0, 1.0, 1.0)) == (18.0, 16.0, 14.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0, 1.0)
    assert default_radii_mm((0.5, 0.5, 2.0)) == (18.0, 16.0, 14.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0)
    assert default_radii_mm((0.9, 0.9, 0.9)) == (18.0, 16.0, 14.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0, 0.9)
    assert default_radii_mm((3.0, 3.0, 3.0)) == (18.0, 15.0, 12.0, 9.0, 6.0, 3.0)


def test_vsharp_keeps_more_brain_than_sharp_with_its_largest_radius(phantom):
    mask, local, background = phantom
    _, mask_sharp = sharp(local + background, mask, VOXEL, radius_mm=12.0)
    _, mask_vsharp = vsharp(local + background, mask, VOXEL)
    assert mask_vsharp.sum() > 0.85 * mask.sum() > 2 * mask_sharp.sum()


# --------------------------------------------------------------------- PDF specifics

def test_pdf_keeps_the_mask_and_follows_an_oblique_b0():
    tilt = np.deg2rad(25.0)
    b0_dir = (np.sin(tilt), 0.0, np.cos(tilt))
    mask, local, background = _phantom(b0_dir)
    field = local + background
    estimate, mask_out = pdf(field, mask, VOXEL, b0_dir=b0_dir)
    np.testing.assert_array_equal(mask_out, mask)
    assert mask_out is not mask
    right = _errors(estimate, mask, local, background)
    assert right[0] < 0.02 and right[1] < 0.45
    # Assuming B0 along k instead fits the background far worse.
    wrong, _ = pdf(field, mask, VOXEL, b0_dir=B0)
    assert _errors(wrong, mask, local, background)[1] > 2 * right[1]


def test_pdf_weights_ignore_corrupted_voxels(phantom):
    mask, local, background = phantom
    field = local + background
    x, _, _ = _grid(SHAPE)
    corrupted = mask & (x > 18)  # a slab of bad phase near the edge
    field[corrupted] += np.float32(0.5)
    weights = np.where(corrupted, 0.0, 3.0).astype(np.float32)
    good = mask & ~corrupted
    weighted, _ = pdf(field, mask, VOXEL, weights=weights)
    plain, _ = pdf(field, mask, VOXEL)
    weighted_error = _rms_demeaned(weighted[good] - local[good])
    plain_error = _rms_demeaned(plain[good] - local[good])
    assert weighted_error < 0.45 * _rms_demeaned(local[good])
    assert plain_error > 3 * weighted_error
    # Uniform weights of any scale are the default.
    uniform, _ = pdf(local + background, mask, VOXEL, weights=np.full(SHAPE, 7.0))
    default, _ = pdf(local + background, mask, VOXEL)
    np.testing.assert_allclose(uniform, default, atol=1e-3 * np.abs(default).max())


def test_pdf_callback_reports_each_iteration_and_can_cancel(phantom):
    mask, local, background = phantom
    calls = []
    pdf(local + background, mask, VOXEL, max_iter=7, tol=0.0,
        callback=lambda iteration, change: calls.append((iteration, change)))
    assert [c[0] for c in calls] == list(range(1, 8))
    assert all(isinstance(c[1], float) for c in calls)
    # the relative change of the local field estimate shrinks as CGLS converges
    assert 0.0 < calls[-1][1] < 0.5 * calls[0][1]

    def cancel(iteration, residual):
        if iteration == 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        pdf(local + background, mask, VOXEL, callback=cancel)


def test_pdf_stops_at_the_tolerance(phantom):
    mask, local, background = phantom
    residuals = []
    pdf(local + background, mask, VOXEL, tol=1e-2, max_iter=500,
        callback=lambda iteration, residual: residuals.append(residual))
    assert residuals[-1] < 1e-2 <= min(residuals[:-1])


# --------------------------------------------------------------------- bad input

@pytest.mark.parametrize("method", [sharp, vsharp, pdf, lbv, ismv, resharp])
def test_bad_inputs_are_refused(method):
    field = np.zeros((20, 20, 20), dtype=np.float32)
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[4:16, 4:16, 4:16] = True
    with pytest.raises(QSMInputError, match="2D"):
        method(field[:, :, 0], mask[:, :, 0], VOXEL)
    with pytest.raises(QSMInputError, match="does not match"):
        method(field, mask[:, :, :10], VOXEL)
    with pytest.raises(QSMInputError, match="empty"):
        method(field, np.zeros_like(mask), VOXEL)
    with pytest.raises(QSMInputError, match="NaN"):
        method(np.where(mask, np.nan, 0.0), mask, VOXEL)
    with pytest.raises(QSMInputError, match="voxel_size"):
        method(field, mask, (1.0, -1.0, 1.0))


def test_bad_options_are_refused():
    field = np.zeros((20, 20, 20), dtype=np.float32)
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[4:16, 4:16, 4:16] = True
    with pytest.raises(QSMInputError, match="no voxel is left"):
        sharp(field, mask, VOXEL, radius_mm=7.0)
    with pytest.raises(QSMInputError, match="no voxel is left"):
        vsharp(field, mask, VOXEL, radii_mm=[6.5])
    tiny = np.zeros_like(mask)
    tiny[9:11, 9:11, 9:11] = True  # thinner than the smallest sphere
    with pytest.raises(QSMInputError, match="no voxel is left"):
        sharp(field, tiny, VOXEL, radius_mm=6.0)
    with pytest.raises(QSMInputError, match="no voxel is left"):
        vsharp(field, tiny, VOXEL)
    with pytest.raises(QSMInputError, match="threshold"):
        sharp(field, mask, VOXEL, threshold=0.0)
    with pytest.raises(QSMInputError, match="radius_mm"):
        sharp(field, mask, VOXEL, radius_mm=-2)
    with pytest.raises(QSMInputError, match="radii_mm"):
        vsharp(field, mask, VOXEL, radii_mm=[])
    with pytest.raises(QSMInputError, match="weights"):
        pdf(field, mask, VOXEL, weights=-np.ones_like(field))
    with pytest.raises(QSMInputError, match="weights"):
        pdf(field, mask, VOXEL, weights=np.ones((20, 20, 10)))
    with pytest.raises(QSMInputError, match="max_iter"):
        pdf(field, mask, VOXEL, max_iter=0)
    with pytest.raises(QSMInputError, match="b0_dir"):
        pdf(field, mask, VOXEL, b0_dir=(0, 0, 0))
    with pytest.raises(QSMInputError, match="pad_voxels"):
        pdf(field, mask, VOXEL, pad_voxels=-3)


# --------------------------------------------------------------------- iterative solvers

ITERATIVE = {
    "pdf": lambda f, m, **kw: pdf(f, m, VOXEL, **kw),
    "lbv": lambda f, m, **kw: lbv(f, m, VOXEL, **kw),
    "ismv": lambda f, m, **kw: ismv(f, m, VOXEL, **kw),
    "resharp": lambda f, m, **kw: resharp(f, m, VOXEL, **kw),
}


@pytest.mark.parametrize("name", ["lbv", "ismv", "resharp"])
def test_iterative_callback_reports_each_iteration_stops_at_tol_and_can_cancel(phantom, name):
    method = ITERATIVE[name]
    mask, local, background = phantom
    field = local + background
    calls = []
    method(field, mask, max_iter=4, tol=0.0,
           callback=lambda iteration, residual: calls.append((iteration, residual)))
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    assert all(isinstance(c[1], float) for c in calls)
    assert calls[-1][1] < calls[0][1] < 1.0

    residuals = []
    method(field, mask, tol=1e-3, max_iter=500,
           callback=lambda iteration, residual: residuals.append(residual))
    assert residuals[-1] < 1e-3 <= min(residuals[:-1])

    def cancel(iteration, residual):
        if iteration == 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        method(field, mask, callback=cancel)


# --------------------------------------------------------------------- LBV specifics

def _harmonic_and_bump(shape, voxel):
    """An ellipsoid mask, a discrete-harmonic polynomial and a bump that vanishes near the edge.

    The polynomial (physical coordinates in mm) has a zero 7-point Laplacian
    exactly, for any voxel size: second differences of x^2 and x are exact.
    """
    x, y, z = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * d for n, d in zip(shape, voxel)],
                          indexing="ij")
    mask = (x / 17) ** 2 + (y / 19) ** 2 + (z / 19) ** 2 < 1
    harmonic = (0.05 * (x ** 2 - y ** 2) + 0.002 * x * y * z + 0.3 * y - 0.2 * z + 4.0)
    rho2 = ((x - 3) ** 2 + (y + 2) ** 2 + z ** 2) / 100.0
    bump = np.where(rho2 < 1, (1 - rho2) ** 3, 0.0)
    return mask, harmonic.astype(np.float32), bump.astype(np.float32)


@pytest.mark.parametrize("coarsest", [None, 100])
def test_lbv_solves_the_boundary_value_problem_exactly(monkeypatch, coarsest):
    # The default multigrid has one coarser grid here; with 100 coarsest
    # unknowns it has three.
    if coarsest is not None:
        monkeypatch.setattr(importlib.import_module("qsmlib.bgremove.lbv"), "_COARSEST_UNKNOWNS",
                            coarsest)
    voxel = (1.0, 1.25, 1.5)
    mask, harmonic, bump = _harmonic_and_bump((40, 36, 30), voxel)
    boundary = mask & ~ndimage.binary_erosion(mask)
    assert not bump[boundary].any() and np.abs(harmonic[mask]).max() > 10 * bump.max()
    # The background is the harmonic function that equals the field on the
    # boundary, so a local field that is 0 there is recovered exactly.
    residuals = []
    local, mask_out = lbv(harmonic + bump, mask, voxel, tol=1e-6,
                          callback=lambda iteration, residual: residuals.append(residual))
    np.testing.assert_array_equal(mask_out, ndimage.binary_erosion(mask))
    np.testing.assert_allclose(local[mask_out], bump[mask_out], atol=5e-6 * np.abs(harmonic).max())
    assert np.all(local[~mask_out] == 0)
    assert len(residuals) <= 20
    only_harmonic, _ = lbv(harmonic, mask, voxel, tol=1e-6)
    assert np.abs(only_harmonic).max() < 5e-6 * np.abs(harmonic).max()


def test_lbv_background_is_discrete_harmonic_and_equals_the_field_on_the_boundary(phantom):
    mask, local, background = phantom
    field = local + background
    estimate, mask_out = lbv(field, mask, VOXEL, tol=1e-5)
    boundary = mask & ~mask_out
    np.testing.assert_array_equal(boundary, mask & ~ndimage.binary_erosion(mask))
    fitted = np.where(mask, field - estimate, 0.0).astype(np.float64)  # = field on the boundary
    laplacian = ndimage.correlate(fitted, _seven_point(), mode="constant")
    field_laplacian = ndimage.correlate(np.where(mask, field, 0.0), _seven_point(), mode="constant")
    assert (np.sqrt(np.mean(laplacian[mask_out] ** 2))
            < 1e-4 * np.sqrt(np.mean(field_laplacian[mask_out] ** 2)))


def _seven_point():
    kernel = np.zeros((3, 3, 3))
    kernel[1, 1, 1] = -6.0
    for axis in range(3):
        for end in (0, 2):
            index = [1, 1, 1]
            index[axis] = end
            kernel[tuple(index)] = 1.0
    return kernel


def test_lbv_peel_erodes_layers_and_leaves_the_rest(phantom):
    mask, local, background = phantom
    field = local + background
    full, full_mask = lbv(field, mask, VOXEL, tol=1e-5)
    peeled, peeled_mask = lbv(field, mask, VOXEL, peel=3, tol=1e-5)
    np.testing.assert_array_equal(peeled_mask,
                                  ndimage.binary_erosion(full_mask, iterations=3))
    np.testing.assert_allclose(peeled[peeled_mask], full[peeled_mask], atol=1e-6)
    assert np.all(peeled[~peeled_mask] == 0)
    # The outer layers hold the largest errors, so peeling them lowers the RMS error.
    assert (_rms_demeaned(peeled[peeled_mask] - local[peeled_mask])
            < _rms_demeaned(full[full_mask] - local[full_mask]))


# --------------------------------------------------------------------- iSMV specifics

def test_ismv_reaches_the_fixed_point_of_the_plain_smv_iteration():
    shape, radius = (32, 30, 28), 3.0
    x, y, z = _grid(shape)
    mask = (x / 13) ** 2 + (y / 12) ** 2 + (z / 11) ** 2 < 1
    rng = np.random.default_rng(5)
    field = (0.02 * (x ** 2 - z ** 2) + 0.1 * x
             + ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) * 5).astype(np.float32)
    field *= mask
    local, mask_out = ismv(field, mask, VOXEL, radius_mm=radius, tol=1e-6, max_iter=500)
    np.testing.assert_array_equal(mask_out, erode_mask(mask, VOXEL, radius))
    # The iteration of the paper: b <- SMV(b) inside the eroded mask, b = f on the shell.
    padded = sphere_padded_shape(shape, VOXEL, radius)
    kernel = smv_kernel(padded, VOXEL, radius)
    background = field.copy()
    for _ in range(400):
        background = np.where(mask_out, smv_filter(background, kernel, padded), field)
    expected = np.where(mask_out, field - background, 0.0)
    assert _rms_demeaned(expected[mask_out]) > 0.1 * _rms_demeaned(field[mask])
    np.testing.assert_allclose(local, expected, atol=1e-4 * np.abs(expected).max())


# --------------------------------------------------------------------- RESHARP specifics

def test_resharp_matches_the_dense_tikhonov_solution():
    # Small enough for the normal equations as a dense matrix, built from the
    # sphere's offsets (linear convolution on a grid holding the whole mask
    # plus the sphere all around).
    shape, radius, lam = (14, 13, 12), 2.0, 3e-3
    x, y, z = _grid(shape)
    mask = (x / 6) ** 2 + (y / 5.5) ** 2 + (z / 5) ** 2 < 1
    rng = np.random.default_rng(11)
    field = 0.3 * x * y + ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    field = field.astype(np.float32)
    local, mask_out = resharp(field, mask, VOXEL, radius_mm=radius, lam=lam, tol=1e-6,
                              max_iter=500)
    eroded = ndimage.binary_erosion(mask, structure=_ball(VOXEL, radius), border_value=0)
    np.testing.assert_array_equal(mask_out, eroded)

    points = np.argwhere(np.ones(shape, dtype=bool))
    n = len(points)
    offsets = np.argwhere(_ball(VOXEL, radius)) - 2
    position = {tuple(p): i for i, p in enumerate(points)}
    c = np.eye(n)
    for i, p in enumerate(points):
        for o in offsets:
            j = position.get(tuple(p + o))
            if j is not None:
                c[i, j] -= 1.0 / len(offsets)
    # Rows of C at the eroded voxels only read voxels inside the grid, so they are exact.
    mc = c[eroded.ravel()]
    solution = np.linalg.solve(mc.T @ mc + lam * np.eye(n),
                               mc.T @ (mc @ np.where(mask, field, 0).ravel().astype(np.float64)))
    expected = np.where(eroded, solution.reshape(shape), 0.0)
    np.testing.assert_allclose(local, expected, atol=3e-4 * np.abs(expected).max())
    # A heavier penalty shrinks the local field.
    heavy, _ = resharp(field, mask, VOXEL, radius_mm=radius, lam=0.3, tol=1e-6, max_iter=500)
    assert np.linalg.norm(heavy[eroded]) < 0.9 * np.linalg.norm(local[eroded])


def test_new_methods_refuse_bad_options():
    field = np.zeros((20, 20, 20), dtype=np.float32)
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[4:16, 4:16, 4:16] = True
    with pytest.raises(QSMInputError, match="peel"):
        lbv(field, mask, VOXEL, peel=-1)
    with pytest.raises(QSMInputError, match="peel"):
        lbv(field, mask, VOXEL, peel=6)  # a 12-voxel cube has no 7th layer
    with pytest.raises(QSMInputError, match="no voxel is left"):
        lbv(field, np.pad(np.ones((2, 2, 2), dtype=bool), 9), VOXEL)
    with pytest.raises(QSMInputError, match="tol"):
        lbv(field, mask, VOXEL, tol=-1e-3)
    with pytest.raises(QSMInputError, match="max_iter"):
        ismv(field, mask, VOXEL, max_iter=0)
    with pytest.raises(QSMInputError, match="no voxel is left"):
        ismv(field, mask, VOXEL, radius_mm=7.0)
    with pytest.raises(QSMInputError, match="radius_mm"):
        ismv(field, mask, VOXEL, radius_mm=0.0)
    with pytest.raises(QSMInputError, match="lam"):
        resharp(field, mask, VOXEL, lam=0.0)
    with pytest.raises(QSMInputError, match="no voxel is left"):
        resharp(field, mask, VOXEL, radius_mm=7.0)
    with pytest.raises(QSMInputError, match="max_iter"):
        resharp(field, mask, VOXEL, max_iter=1.5)
