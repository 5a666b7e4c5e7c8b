"""Tests of qsmlib.dipole: the forward field against analytic solutions, and the B0 direction."""

import numpy as np
import pytest
from scipy.special import erf

from qsmlib.dipole import b0_direction_from_affine, dipole_convolve, point_dipole_convolve

CHI_PPM = 0.1


def _coordinates(n, voxel_size):
    """Voxel-centre coordinates (mm) about the grid centre, and their radius."""
    centre = (n - 1) / 2.0
    grids = np.meshgrid(*[(np.arange(n) - centre) * v for v in voxel_size], indexing="ij")
    return grids, np.sqrt(sum(g ** 2 for g in grids))


def _sphere_occupancy(n, radius_mm, voxel_size, supersampling=4):
    """Volume fraction of each voxel inside a centred sphere (sub-voxel sampling)."""
    centre = (n - 1) / 2.0
    offsets = (np.arange(supersampling) + 0.5) / supersampling - 0.5
    occupancy = np.zeros((n, n, n), dtype=np.float32)
    for ox in offsets:
        for oy in offsets:
            for oz in offsets:
                x, y, z = np.meshgrid(*[(np.arange(n) - centre + o) * v
                                        for o, v in zip((ox, oy, oz), voxel_size)],
                                      indexing="ij", sparse=True)
                occupancy += (x ** 2 + y ** 2 + z ** 2 <= radius_mm ** 2)
    return occupancy / supersampling ** 3


def _sphere_errors(b0_dir, n=64, radius_mm=8.0):
    """Field of a uniform sphere: relative error outside (3 voxels off the surface up to 3 radii)
    and the largest and RMS field inside (3 voxels off the surface), both relative to chi."""
    b = np.asarray(b0_dir, dtype=float) / np.linalg.norm(b0_dir)
    voxel_size = (1.0, 1.0, 1.0)
    chi = _sphere_occupancy(n, radius_mm, voxel_size) * CHI_PPM
    field = dipole_convolve(chi, voxel_size, b)
    grids, r = _coordinates(n, voxel_size)
    r_safe = np.maximum(r, 1e-9)
    # The radius of a sphere with the voxelised volume.
    radius_eff = (3.0 * chi.sum() / CHI_PPM / (4.0 * np.pi)) ** (1.0 / 3.0)
    cos_theta = sum(g * bd for g, bd in zip(grids, b)) / r_safe
    analytic = CHI_PPM * radius_eff ** 3 / (3.0 * r_safe ** 3) * (3.0 * cos_theta ** 2 - 1.0)
    outside = (r >= radius_mm + 3) & (r <= 3 * radius_mm)
    inside = r <= radius_mm - 3
    rel_outside = np.linalg.norm(field[outside] - analytic[outside]) / np.linalg.norm(analytic[outside])
    return (rel_outside, np.abs(field[inside]).max() / CHI_PPM,
            np.sqrt(np.mean(field[inside] ** 2)) / CHI_PPM)


def test_sphere_field_matches_analytic_solution():
    # Outside: chi a^3 / (3 r^3) (3 cos^2 theta - 1); inside: 0 (Lorentz-corrected kernel).
    rel_outside, max_inside, rms_inside = _sphere_errors((0.0, 0.0, 1.0))
    assert rel_outside < 0.015
    assert max_inside < 0.005
    assert rms_inside < 0.002


def test_sphere_field_with_tilted_b0():
    # Theta measured from the tilted axis. The sharp sphere edge makes the
    # discrete k-space kernel a little less exact when B0 is off the grid axes
    # (about 2 % here); the smooth source below checks the tilted kernel tightly.
    rel_outside, max_inside, rms_inside = _sphere_errors((1.0, 0.5, 2.0))
    assert rel_outside < 0.04
    assert max_inside < 0.05
    assert rms_inside < 0.02


@pytest.mark.parametrize("b0_dir, voxel_size, tolerance", [
    ((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), 2e-3),
    ((1.0, 0.5, 2.0), (1.0, 1.0, 1.0), 2e-3),
    ((1.0, 0.0, 1.0), (1.0, 1.0, 1.0), 2e-3),
    ((0.3, -0.4, 1.0), (0.8, 1.0, 1.25), 1e-2),
])
def test_gaussian_source_field_matches_analytic_solution(b0_dir, voxel_size, tolerance):
    # A spherically symmetric chi(s) gives the Lorentz-corrected field
    # (3 cos^2 theta - 1) [ (1/r^3) int_0^r chi(s) s^2 ds - chi(r) / 3 ],
    # closed form for a Gaussian; being nearly band-limited it tests the kernel itself.
    n, sigma = 64, 2.5
    b = np.asarray(b0_dir, dtype=float) / np.linalg.norm(b0_dir)
    grids, r = _coordinates(n, voxel_size)
    r_safe = np.maximum(r, 1e-6)
    chi = CHI_PPM * np.exp(-r ** 2 / (2 * sigma ** 2))
    field = dipole_convolve(chi.astype(np.float32), voxel_size, b)
    integral = CHI_PPM * sigma ** 3 * (np.sqrt(np.pi / 2) * erf(r_safe / (sigma * np.sqrt(2)))
                                       - r_safe / sigma * np.exp(-r_safe ** 2 / (2 * sigma ** 2)))
    cos_theta = sum(g * bd for g, bd in zip(grids, b)) / r_safe
    analytic = (3 * cos_theta ** 2 - 1) * (integral / r_safe ** 3 - chi / 3)
    region = (r > 1.0) & (r < 20.0)
    error = np.linalg.norm(field[region] - analytic[region]) / np.linalg.norm(analytic[region])
    assert error < tolerance


def test_field_is_linear_and_keeps_dtype_and_shape():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((20, 24, 28)).astype(np.float32)
    b = rng.standard_normal((20, 24, 28)).astype(np.float32)
    fa = dipole_convolve(a, (1, 1, 1), (0, 0, 1))
    fb = dipole_convolve(b, (1, 1, 1), (0, 0, 1))
    fab = dipole_convolve(2 * a - b, (1, 1, 1), (0, 0, 1))
    assert fab.shape == a.shape and fab.dtype == np.float32
    np.testing.assert_allclose(fab, 2 * fa - fb, atol=1e-5)


def _rotation(axis, angle_rad):
    """Rotation matrix about ``axis`` (Rodrigues' formula)."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * skew + (1 - np.cos(angle_rad)) * skew @ skew


def _affine(linear, origin=(10.0, -20.0, 30.0)):
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


def _assert_same_direction(actual, expected):
    """Equal up to sign: the dipole kernel depends on the direction only through (k.b)^2."""
    actual, expected = np.asarray(actual), np.asarray(expected) / np.linalg.norm(expected)
    assert np.isclose(np.linalg.norm(actual), 1.0)
    assert min(np.abs(actual - expected).max(), np.abs(actual + expected).max()) < 1e-9


@pytest.mark.parametrize("axis, angle_deg", [
    ((1, 0, 0), 0.0), ((1, 0, 0), 20.0), ((0, 1, 0), -35.0), ((1, 1, 0), 30.0), ((0.3, -0.5, 0.8), 50.0),
])
@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (0.5, 0.7, 2.0)])
@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, 1), (1, -1, -1)])
def test_b0_direction_of_oblique_affines(axis, angle_deg, voxel_size, flips):
    rotation = _rotation(axis, np.deg2rad(angle_deg))
    signs = np.asarray(flips, dtype=float)
    affine = _affine(rotation @ np.diag(signs * np.asarray(voxel_size)))
    # Voxel axis d points along signs[d] * rotation[:, d]; its cosine with world z.
    expected = signs * rotation[2, :]
    _assert_same_direction(b0_direction_from_affine(affine), expected)


def test_b0_direction_of_axial_coronal_and_sagittal_acquisitions():
    axial = _affine(np.diag([0.9, 0.9, 2.0]))
    _assert_same_direction(b0_direction_from_affine(axial), (0, 0, 1))
    # Coronal slices: i = R, j = S, k = A (voxel axis 1 along world z).
    coronal = _affine(np.array([[0.8, 0, 0], [0, 0, 3.0], [0, 0.8, 0]]))
    _assert_same_direction(b0_direction_from_affine(coronal), (0, 1, 0))
    # Sagittal slices stored A, inferior (flipped), L: voxel axis 1 against world z.
    sagittal = _affine(np.array([[0, 0, -1.5], [1.0, 0, 0], [0, -1.0, 0]]))
    _assert_same_direction(b0_direction_from_affine(sagittal), (0, -1, 0))


def test_b0_direction_is_the_same_in_ras_and_lps_worlds():
    # LPS (DICOM, ITK) and RAS (NIfTI, Slicer) differ by flipping world x and y; z is shared.
    linear = _rotation((1, 2, 3), 0.4) @ np.diag([0.6, 0.6, 1.2])
    ras = _affine(linear)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    np.testing.assert_allclose(b0_direction_from_affine(lps), b0_direction_from_affine(ras), atol=1e-12)


def test_b0_direction_refuses_singular_affine():
    with pytest.raises(ValueError):
        b0_direction_from_affine(_affine(np.diag([1.0, 0.0, 1.0])))


@pytest.mark.parametrize("b0_dir", [(0.0, 0.0, 1.0), (0.36, 0.0, 0.93)])
def test_point_dipole_field_of_a_sphere_matches_the_analytic_exterior_field(b0_dir):
    """A uniformly magnetised sphere's outside field equals one dipole at its centre."""
    n, radius, chi = 64, 6.0, 1.0
    grid = np.indices((n, n, n)).astype(np.float64) - n // 2
    r = np.sqrt((grid ** 2).sum(axis=0))
    sphere = (r <= radius).astype(np.float32)
    field = point_dipole_convolve(sphere * chi, (1.0, 1.0, 1.0), b0_dir)
    b = np.asarray(b0_dir) / np.linalg.norm(b0_dir)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos2 = np.tensordot(b, grid, axes=1) ** 2 / r ** 2
        volume = sphere.sum()
        analytic = chi * volume * (3 * cos2 - 1) / (4 * np.pi * r ** 3)
    far = (r > 2.5 * radius) & (r < n // 2 - 2)
    error = np.abs(field - analytic)[far].max() / np.abs(analytic[far]).max()
    assert error < 0.01  # measured about 0.2 %
