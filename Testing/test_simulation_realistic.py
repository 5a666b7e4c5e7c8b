"""Tests of the realistic simulator: the cuboid-voxel field, k-space sampling, texture, and the full chain.

The numbers checked are physical answers (quadrature of the dipole field, the
analytic field of a sphere, the Gibbs overshoot, the published texture weights)
or differences against the inversions' discrete forward model.
"""

import numpy as np
import pytest
import scipy.ndimage as ndi

from qsmlib.constants import hz_per_ppm
from qsmlib.dipole import b0_direction_from_affine, dipole_convolve
from qsmlib.errors import QSMInputError
from qsmlib.phase import wrap_to_pi
from qsmlib.simulation.cuboid_dipole import (CuboidDipoleOperator, cuboid_dipole_convolve, cuboid_field,
                                             point_dipole_field)
from qsmlib.simulation.fine_phantom import FineHeadModel, FineTissue, load_fine_head_model
from qsmlib.simulation.kspace_sampling import acquisition_grid, kspace_resample
from qsmlib.simulation.phantom import area_average, overlap_matrix
from qsmlib.simulation.realistic import simulate_realistic_gre
from qsmlib.simulation.texture import NOMINAL_FIBRE_DIRECTIONS, R2STAR_CV, R1_CV, tissue_maps

TILTED = tuple(np.array([0.3, 0.2, 0.93]) / np.linalg.norm([0.3, 0.2, 0.93]))


def _tissue(name, chi=0.0, m0=1.0, r2star=0.0, r1=1.0):
    return FineTissue(name, chi, max(chi, 0.0), min(chi, 0.0), 0.0, 0.0, 0.0, 0.0, r2star, m0, r1, r1)


def _sphere_model(n, voxel_mm, radius_mm, *, inside, outside, medium=None, mask_margin_mm=6.0):
    """A sphere (label 1) in an outside tissue (label 2) or, without it, in the no-signal medium (label 3)."""
    centre = (np.arange(n) - (n - 1) / 2) * voxel_mm
    x, y, z = np.meshgrid(centre, centre, centre, indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    labels = np.where(r < radius_mm, 1, 2 if outside is not None else 3).astype(np.uint8)
    tissues = {1: inside, 3: medium or _tissue("air", m0=0.0, r1=0.0)}
    if outside is not None:
        tissues[2] = outside
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -(n - 1) / 2 * voxel_mm
    model = FineHeadModel(labels=labels, brain_mask=r < radius_mm + mask_margin_mm, affine=affine,
                          voxel_size_mm=(voxel_mm,) * 3, tissues=tissues, air_label=3)
    return model, r


def _quadrature(point, size, b, order=40):
    nodes, weights = np.polynomial.legendre.leggauss(order)
    half = np.asarray(size) / 2
    axes = [nodes * h for h in half]
    w = [weights * h for h in half]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    weight = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
    return float(np.sum(point_dipole_field(point[0] - x, point[1] - y, point[2] - z, 1.0, b) * weight))


# --- the cuboid-voxel field ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [(1.0, 1.0, 1.0), (0.5, 0.7, 1.3)])
@pytest.mark.parametrize("b", [(0.0, 0.0, 1.0), TILTED])
def test_cuboid_field_is_the_integral_of_point_dipoles(size, b):
    # Outside the voxel, the field is the point-dipole field integrated over its volume.
    for point in [(2.0, 0.0, 0.0), (0.0, 0.0, 2.0), (1.0, 1.0, 0.0), (1.5, 2.2, 0.4), (3.0, 1.0, -2.0)]:
        exact = float(cuboid_field(*point, size, b))
        assert exact == pytest.approx(_quadrature(point, size, b), rel=1e-9, abs=1e-14)


def test_cuboid_field_trace_and_centre():
    rng = np.random.default_rng(1)
    points = rng.uniform(-3, 3, size=(3, 500))
    size = (0.5, 0.7, 1.3)
    # Summed over three orthogonal B0 directions the Lorentz-corrected field vanishes
    # everywhere (the potential's Laplacian is -4 pi inside, 0 outside).
    total = sum(cuboid_field(*points, size, axis) for axis in np.eye(3))
    np.testing.assert_allclose(total, 0.0, atol=1e-12)
    # A cube at its own centre: no field, as for a sphere.
    assert abs(float(cuboid_field(0.0, 0.0, 0.0, (0.64,) * 3, TILTED))) < 1e-15
    # Far away: the point dipole; for a cube the first correction is of order (d / r)^4.
    far = np.array([40.0, -25.0, 31.0])
    assert float(cuboid_field(*far, (1.0, 1.0, 1.0), TILTED)) == pytest.approx(
        float(point_dipole_field(*far, 1.0, TILTED)), rel=1e-5)


def test_operator_is_the_direct_sum_over_voxels():
    rng = np.random.default_rng(2)
    chi = rng.standard_normal((6, 5, 7)).astype(np.float32)
    size = (0.64, 0.64, 0.64)
    operator = CuboidDipoleOperator(chi.shape, size, TILTED, near_field_voxels=8)
    field = operator.apply(chi)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in chi.shape), indexing="ij"), axis=-1).reshape(-1, 3)
    direct = np.zeros(len(grid))
    for source, value in zip(grid, chi.ravel()):
        offset = (grid - source) * 0.64
        direct += value * cuboid_field(offset[:, 0], offset[:, 1], offset[:, 2], size, TILTED)
    np.testing.assert_allclose(field.ravel(), direct, atol=2e-6 * np.abs(direct).max())


def _voxel_sphere(n, voxel_mm, radius_mm):
    centre = (np.arange(n) - (n - 1) / 2) * voxel_mm
    x, y, z = np.meshgrid(centre, centre, centre, indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    return x, y, z, r


def test_sphere_field_is_the_analytic_one_and_the_discrete_kernel_is_not():
    # A 10 mm sphere on a 0.5 mm grid, B0 tilted: uniform (zero, Lorentz-corrected)
    # inside, chi a^3 (3 cos^2 - 1) / (3 r^3) outside.
    n, voxel, radius = 96, 0.5, 10.0
    x, y, z, r = _voxel_sphere(n, voxel, radius)
    chi = (r < radius).astype(np.float32)
    b = np.asarray(TILTED)
    cos2 = ((x * b[0] + y * b[1] + z * b[2]) / np.maximum(r, 1e-9)) ** 2
    analytic = np.where(r < radius, 0.0, radius ** 3 / (3 * r ** 3) * (3 * cos2 - 1))
    exact = cuboid_dipole_convolve(chi, (voxel,) * 3, TILTED)
    discrete = dipole_convolve(chi, (voxel,) * 3, TILTED)
    far = (r > 1.5 * radius) & (r < 2.2 * radius)
    inside = r < radius - 2.0

    def rms(values, where):
        return float(np.sqrt(np.mean(values[where] ** 2)))

    # The staircase sphere deviates from the ideal one only near its surface.
    assert rms(exact - analytic, far) < 2e-4             # measured 7e-5 (peak field 0.67)
    assert rms(exact - analytic, inside) < 2e-3          # measured 7e-4
    # The discrete kernel rings at an oblique B0: ten times the error far out and inside.
    assert rms(discrete - analytic, far) > 10 * rms(exact - analytic, far)
    assert rms(discrete - analytic, inside) > 5 * rms(exact - analytic, inside)


# --- k-space sampling -------------------------------------------------------------------------

def test_acquisition_grid_fits_whole_voxels():
    assert acquisition_grid(256, 0.64, 1.0) == (275, 176, 1.0)
    assert acquisition_grid(256, 0.64, 2.0) == (275, 88, 2.0)
    assert acquisition_grid(320, 0.64, 0.5) == (325, 416, 0.5)
    assert acquisition_grid(256, 0.64, 0.64) == (256, 256, 0.64)
    n_fov, n_acq, size = acquisition_grid(256, 0.64, 1.5)
    assert n_fov * 0.64 == pytest.approx(n_acq * size) and size == 1.5


@pytest.mark.parametrize("n_out", [20, 25, 33, 128])
def test_kspace_resample_is_exact_for_band_limited_images(n_out):
    # A sinusoid inside both bands is reproduced at the acquisition voxel centres,
    # which share the field-of-view box with the fine grid.
    n, voxel = 64, 0.5
    fov = n * voxel
    x = (np.arange(n) + 0.5) * voxel
    wave = np.cos(2 * np.pi * 3 * x / fov + 0.3)
    image = np.broadcast_to(wave[:, None, None], (n, 4, 4)).astype(np.float32)
    out = kspace_resample(image, (n_out, 4, 4))
    assert out.dtype == np.float32 and out.shape == (n_out, 4, 4)
    x_out = (np.arange(n_out) + 0.5) * fov / n_out
    np.testing.assert_allclose(out[:, 0, 0], np.cos(2 * np.pi * 3 * x_out / fov + 0.3), atol=1e-5)
    constant = kspace_resample(np.full((n, 5, 6), 2.5, np.complex64), (n_out, 3, 6))
    np.testing.assert_allclose(constant, 2.5, atol=1e-5)


def test_kspace_truncation_rings_at_a_sharp_edge():
    # A step truncated to a fifth of its bandwidth: the Gibbs overshoot (8.9 % of the
    # jump for the continuous image) appears on the samples, alternating in sign on
    # both sides; the volume average has none.
    n, n_out = 250, 50
    overshoots = []
    for edge in range(50, 56):
        step = np.zeros((n, 1, 1), np.float32)
        step[edge:150] = 1.0
        out = kspace_resample(step, (n_out, 1, 1))[:, 0, 0]
        overshoots.append(float(out.max() - 1.0))
        average = area_average(step, [overlap_matrix(n, 1.0, 5.0)[0], overlap_matrix(1, 1.0, 1.0)[0],
                                      overlap_matrix(1, 1.0, 1.0)[0]])[:, 0, 0]
        assert average.max() <= 1.0 + 1e-6 and average.min() >= -1e-6
        outside = out[2:10]
        assert np.all(np.sign(outside[:-1]) != np.sign(outside[1:]))   # ringing, not a ramp
    assert 0.07 < max(overshoots) < 0.0895
    assert min(overshoots) > 0.005


# --- texture ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def head_block():
    """The basal ganglia and the central white matter of the 0.64 mm model (112 x 120 x 96 voxels)."""
    model = load_fine_head_model()
    box = (slice(72, 184), slice(110, 230), slice(110, 206))
    return FineHeadModel(labels=np.ascontiguousarray(model.labels[box]),
                         brain_mask=np.ascontiguousarray(model.brain_mask[box]), affine=model.affine,
                         voxel_size_mm=model.voxel_size_mm, tissues=model.tissues, air_label=model.air_label,
                         wm_regions=np.ascontiguousarray(model.wm_regions[box]), wm_table=model.wm_table)


def test_shipped_fine_model():
    model = load_fine_head_model()
    assert model.labels.shape == (256, 320, 320) and model.labels.dtype == np.uint8
    assert model.voxel_size_mm == (0.64, 0.64, 0.64)
    assert 1305 < model.brain_mask.sum() * 0.64 ** 3 / 1000 < 1315          # 1310 mL in the source
    assert model.tissues[8].name == "WM" and model.tissues[14].chi_ppm == 9.2
    assert sorted(model.wm_table) == list(range(1, 12))
    assert set(np.unique(model.labels[model.wm_regions > 0]).tolist()) == {8}


def test_susceptibility_follows_the_relaxation_texture(head_block):
    maps = tissue_maps(head_block, b0_t=3.0, b0_dir=(0, 0, 1), rng=np.random.default_rng(5))
    labels = head_block.labels
    for label in (1, 2, 3, 4, 7, 8, 9):
        tissue = head_block.tissues[label]
        voxels = labels == label
        chi = maps.chi_ppm[voxels].astype(np.float64)
        r2star = maps.r2star_hz[voxels].astype(np.float64)
        r1 = maps.r1_hz[voxels].astype(np.float64)
        # Tissue means keep their table values; textures have the stated spread.
        assert chi.mean() == pytest.approx(tissue.chi_ppm, abs=2e-4)
        assert r2star.mean() == pytest.approx(tissue.r2star_3t_hz, rel=2e-3)
        assert r2star.std() / r2star.mean() == pytest.approx(R2STAR_CV, rel=0.03)
        assert r1.std() / r1.mean() == pytest.approx(R1_CV, rel=0.03)
        # Regression of chi on the R2* and R1 deviations returns the published weights.
        design = np.stack([np.ones_like(r2star), r2star - r2star.mean(), r1 - r1.mean()], axis=1)
        coef = np.linalg.lstsq(design, chi, rcond=None)[0]
        assert coef[1] == pytest.approx(tissue.r2star_weight_pos + tissue.r2star_weight_neg, abs=2e-6)
        assert coef[2] == pytest.approx(tissue.r1_weight_pos + tissue.r1_weight_neg, abs=2e-5)
    wm = labels == 8
    correlation = np.corrcoef(maps.r2star_hz[wm], maps.r1_hz[wm])[0, 1]
    assert 0.2 < correlation < 0.4                    # drawn with 0.3


def test_magnitude_edges_do_not_follow_susceptibility_edges(head_block):
    maps = tissue_maps(head_block, b0_t=3.0, b0_dir=(0, 0, 1), rng=np.random.default_rng(6), texture=False)
    labels = head_block.labels
    gm, csf = labels == 9, labels == 10
    boundary = gm & ndi.binary_dilation(csf)
    # Farther from any other tissue than the blur's reach (2 voxels per axis).
    interior = gm & ~ndi.binary_dilation(~gm, structure=np.ones((3, 3, 3), bool), iterations=3)
    # Without texture, susceptibility is exactly the table value up to the boundary...
    np.testing.assert_array_equal(maps.chi_ppm[boundary], np.float32(0.02))
    # ...while the magnitude's proton density changes across it (GM 0.80, CSF 1.00).
    assert np.mean(maps.magnitude_pd[boundary]) > 0.84
    np.testing.assert_allclose(maps.magnitude_pd[interior], 0.80, atol=1e-5)


def test_white_matter_anisotropy_with_synthetic_fibres(head_block):
    rng = np.random.default_rng(7)
    plain = tissue_maps(head_block, b0_t=3.0, b0_dir=TILTED, rng=np.random.default_rng(7), texture=False)
    maps = tissue_maps(head_block, b0_t=3.0, b0_dir=TILTED, rng=rng, texture=False, wm_anisotropy=True)
    index, fibres = maps.fibre_index, maps.fibre_dir
    np.testing.assert_allclose(np.linalg.norm(fibres, axis=1), 1.0, atol=1e-5)
    regions = head_block.wm_regions[index]
    cos2 = (fibres @ np.asarray(TILTED, np.float32)) ** 2
    for region, entry in head_block.wm_table.items():
        this = regions == region
        expected = entry.chi0_ppm + entry.delta_chi_ppm * cos2[this]
        np.testing.assert_allclose(maps.chi_ppm[index][this], expected, atol=1e-6)
    # Synthetic directions follow the nominal anatomy: the body of the corpus callosum runs left-right.
    body = regions == 1
    assert np.median(np.abs(fibres[body, 0])) > 0.9
    assert NOMINAL_FIBRE_DIRECTIONS["body of the corpus callosum"] == (1.0, 0.0, 0.0)
    # Outside the tracts nothing changes.
    outside = head_block.wm_regions == 0
    np.testing.assert_array_equal(maps.chi_ppm[outside], plain.chi_ppm[outside])


# --- the whole chain ----------------------------------------------------------------------------

def _field_from_phase_ppm(sim, echo=0):
    phase = wrap_to_pi(sim.phase[..., echo] - sim.phase_offset_rad)
    return phase / (2 * np.pi * sim.te_s[echo]) / hz_per_ppm(sim.b0_t)


def test_phase_differs_from_the_discrete_model_at_edges_and_agrees_inside():
    # An iron-rich sphere (9.3 mm, 0.2 ppm, R2* 60/s) in tissue (0 ppm, R2* 20/s),
    # computed at 0.5 mm, acquired at 1 mm, TE 20 ms, B0 tilted. The field the phase
    # encodes and the inversions' model (discrete kernel on the acquisition grid,
    # applied to the true map) differ in the partial-volume voxels, where the
    # complex signal of two tissues is averaged, and agree inside and outside.
    n, voxel, radius = 128, 0.5, 9.3
    model, r = _sphere_model(n, voxel, radius, inside=_tissue("sphere", chi=0.2, r2star=60.0),
                             outside=_tissue("tissue", chi=0.0, r2star=20.0), mask_margin_mm=20.0)
    sim = simulate_realistic_gre(model, voxel_size_mm=1.0, b0_t=3.0, te_s=(0.02,), snr=None, b0_dir=TILTED,
                                 texture=False, shim=False, seed=3)
    assert sim.magnitude.shape == (64, 64, 64, 1)
    occupancy = area_average((r < radius).astype(np.float32), [overlap_matrix(n, voxel, 1.0)[0]] * 3)
    edge = (occupancy > 0.02) & (occupancy < 0.98)
    interior = ndi.distance_transform_edt(occupancy >= 0.98) >= 2
    centre = np.arange(64) - 31.5
    distance = np.sqrt(sum(np.square(c) for c in np.meshgrid(centre, centre, centre, indexing="ij")))
    exterior = (ndi.distance_transform_edt(occupancy <= 0.02) >= 2) & (distance < 2.2 * radius)
    model_field = dipole_convolve(sim.chi_ppm, sim.voxel_size_mm, TILTED)
    peak = np.abs(model_field).max()                                      # 0.116 ppm
    difference = np.abs(_field_from_phase_ppm(sim) - model_field)
    assert difference[edge].mean() > 4 * difference[interior].mean()     # measured 6.7
    assert difference[edge].mean() > 4 * difference[exterior].mean()     # measured 37
    assert difference[edge].mean() > 0.03 * peak                         # measured 0.044
    assert difference[interior].mean() < 0.015 * peak                    # measured 0.0065
    assert difference[exterior].mean() < 0.005 * peak                    # measured 0.0011
    # The local-field truth (the fine field, k-space truncated) is linear in chi: it
    # differs from the discrete model by less than 1 % of the peak on average
    # (the field of cuboid voxels is not that of a band-limited map), with no
    # concentration at the edge comparable to the phase's.
    linear = np.abs(sim.local_field_ppm - model_field)
    near = distance < 2.2 * radius
    assert linear[near].mean() < 0.01 * peak                             # measured 0.0015
    assert linear[edge].mean() < 0.5 * difference[edge].mean()           # measured 0.17


def test_native_grid_is_unchanged_and_tilted_affine():
    model, r = _sphere_model(40, 0.64, 6.0, inside=_tissue("sphere", chi=0.1, m0=1.0, r2star=20.0),
                             outside=_tissue("tissue", chi=0.0, m0=0.8, r2star=15.0))
    sim = simulate_realistic_gre(model, voxel_size_mm=0.64, te_s=(0.005, 0.01), snr=None, b0_dir=TILTED,
                                 texture=False, shim=False)
    assert sim.magnitude.shape == (40, 40, 40, 2)
    np.testing.assert_allclose(b0_direction_from_affine(sim.affine), TILTED, atol=1e-9)
    # No truncation at the native size: the truth is the fine map itself.
    np.testing.assert_allclose(sim.chi_ppm, np.where(model.brain_mask, np.where(r < 6.0, 0.1, 0.0), 0.0),
                               atol=1e-6)
    np.testing.assert_array_equal(sim.labels, model.labels)
    # R2* decay between the echoes inside the sphere, away from its edge and with no
    # field gradient to speak of at its centre.
    centre = (20, 20, 20)
    ratio = sim.magnitude[centre + (1,)] / sim.magnitude[centre + (0,)]
    assert ratio == pytest.approx(np.exp(-20.0 * 0.005), rel=1e-3)


def test_anisotropic_and_finer_in_plane_acquisition():
    model, _ = _sphere_model(50, 0.64, 8.0, inside=_tissue("sphere", chi=0.1), outside=_tissue("tissue", m0=0.7))
    sim = simulate_realistic_gre(model, voxel_size_mm=(0.5, 0.5, 2.0), te_s=(0.01,), snr=None, texture=False,
                                 shim=False)
    # 50 x 0.64 mm = 32 mm = 64 x 0.5 mm = 16 x 2 mm: no padding needed.
    assert sim.magnitude.shape == (64, 64, 16, 1)
    assert sim.voxel_size_mm == (0.5, 0.5, 2.0)
    np.testing.assert_allclose(np.linalg.norm(sim.affine[:3, :3], axis=0), (0.5, 0.5, 2.0))
    # The grids share the field of view: same world centre.
    fine_centre = model.affine @ np.r_[(np.array(model.labels.shape) - 1) / 2, 1.0]
    acq_centre = sim.affine @ np.r_[(np.array(sim.magnitude.shape[:3]) - 1) / 2, 1.0]
    np.testing.assert_allclose(acq_centre, fine_centre, atol=1e-9)


def test_intra_voxel_dephasing_near_an_air_hole():
    # A 6 mm air-like sphere (-9.2 ppm relative to the tissue) at 7 T, 2 mm voxels:
    # next to it the field varies within a voxel, and the magnitude decays faster
    # than R2* alone says; far from it, it does not.
    tissue = _tissue("tissue", chi=0.0, m0=1.0, r2star=0.0)
    hole = _tissue("hole", chi=-9.2, m0=0.0, r2star=0.0)
    model, r = _sphere_model(100, 0.64, 6.0, inside=hole, outside=tissue, mask_margin_mm=40.0)
    sim = simulate_realistic_gre(model, voxel_size_mm=2.0, b0_t=7.0, te_s=(0.002, 0.02), snr=None,
                                 texture=False, shim=False)
    ratio = sim.magnitude[..., 1] / np.maximum(sim.magnitude[..., 0], 1e-12)
    centre = (np.arange(32) - 15.5) * 2.0
    radius = np.sqrt(sum(np.square(c) for c in np.meshgrid(centre, centre, centre, indexing="ij")))
    near = (radius > 8.0) & (radius < 10.0)
    far = (radius > 22.0) & (radius < 26.0)
    assert np.median(ratio[near]) < 0.8
    assert np.median(ratio[far]) > 0.98


def test_noise_level_and_coils():
    model, r = _sphere_model(50, 0.64, 10.0, inside=_tissue("sphere", m0=1.0), outside=None)
    sim = simulate_realistic_gre(model, voxel_size_mm=2.0, te_s=(0.004, 0.008), snr=20.0, texture=False,
                                 shim=False, seed=4)
    mean_signal = sim.noise_sd * 20.0
    air = sim.labels == 3
    # Rayleigh magnitude in air: mean sigma sqrt(pi / 2), plus some Gibbs ringing near the sphere.
    far_air = air & (ndi.distance_transform_edt(air) > 3)
    assert np.mean(sim.magnitude[..., 0][far_air]) == pytest.approx(sim.noise_sd * np.sqrt(np.pi / 2), rel=0.08)
    assert mean_signal > 0
    coils = simulate_realistic_gre(model, voxel_size_mm=2.0, te_s=(0.004,), snr=None, texture=False, shim=False,
                                   n_coils=8, seed=4)
    single = simulate_realistic_gre(model, voxel_size_mm=2.0, te_s=(0.004,), snr=None, texture=False,
                                    shim=False, n_coils=0, seed=4)
    inside = coils.brain_mask & (coils.labels == 1)
    # Noiseless, the combined phase is the object's phase whatever the coils' phases.
    np.testing.assert_allclose(wrap_to_pi(coils.phase - single.phase)[inside], 0.0, atol=1e-4)


def test_invalid_arguments():
    model, _ = _sphere_model(20, 0.64, 3.0, inside=_tissue("sphere"), outside=None)
    with pytest.raises(QSMInputError, match="milliseconds"):
        simulate_realistic_gre(model, te_s=(4, 8))
    with pytest.raises(QSMInputError, match="truth"):
        simulate_realistic_gre(model, truth="mean")
    with pytest.raises(QSMInputError, match="n_coils"):
        simulate_realistic_gre(model, n_coils=-1)
    with pytest.raises(QSMInputError, match="snr"):
        simulate_realistic_gre(model, snr=0)


def test_cli_simulate_realistic(tmp_path, monkeypatch, capsys):
    import nibabel as nib

    import qsmlib.simulation
    from qsmlib.cli import main

    # The CLI path with a small stand-in for the 0.64 mm head (the full head takes a minute).
    model, _ = _sphere_model(50, 0.64, 10.0, inside=_tissue("sphere", chi=0.1, r2star=30.0),
                             outside=_tissue("tissue", r2star=20.0, m0=0.8))
    monkeypatch.setattr(qsmlib.simulation, "load_fine_head_model", lambda: model)
    out = tmp_path / "bids"
    assert main(["simulate", "--out", str(out), "--realistic", "--voxel-size", "0.5", "0.5", "2", "--te", "0.005",
                 "0.01", "--snr", "50", "--coils", "4"]) == 0
    magnitude = nib.load(str(out / "sub-01" / "anat" / "sub-01_echo-1_part-mag_MEGRE.nii.gz"))
    assert magnitude.shape == (64, 64, 16)
    np.testing.assert_allclose(magnitude.header.get_zooms()[:3], (0.5, 0.5, 2.0))
    truth = out / "derivatives" / "truth" / "sub-01" / "anat"
    kspace = nib.load(str(truth / "sub-01_Chimap.nii.gz")).get_fdata()
    average = nib.load(str(truth / "sub-01_desc-average_Chimap.nii.gz")).get_fdata()
    assert kspace.shape == average.shape == (64, 64, 16)
    assert np.max(average) == pytest.approx(0.1, abs=1e-6)        # whole voxels inside the sphere
    assert np.max(kspace) > 0.1                                    # truncation rings above it
    assert main(["simulate", "--out", str(tmp_path / "other"), "--wm-anisotropy"]) != 0
    assert "apply with --realistic only" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_majority_labels_match_the_phantom_resampler(head_block):
    from qsmlib.simulation.phantom import resample_labels
    from qsmlib.simulation.realistic import majority_labels

    labels, mask = head_block.labels, head_block.brain_mask
    affine = np.diag([0.64, 0.64, 0.64, 1.0])
    # 112 x 120 x 96 voxels of 0.64 mm = 71.68 x 76.8 x 61.44 mm: 1.28 mm voxels fit exactly.
    expected, expected_mask, _ = resample_labels(labels, mask, affine, 1.28, fill_label=head_block.air_label)
    matrices = [overlap_matrix(n, 0.64, 1.28)[0] for n in labels.shape]
    mask_out = area_average(mask, matrices) > 0.5
    np.testing.assert_array_equal(mask_out, expected_mask)
    found = majority_labels(labels, mask, matrices, mask_out, fill_label=head_block.air_label)
    assert np.mean(found != expected) < 1e-3          # only exact ties may break differently


def test_coil_combination_matches_explicit_channels():
    from qsmlib.simulation.realistic import _receive

    # 4 coils with random complex sensitivities at one voxel; the shortcut in _receive
    # must give the distribution of the explicit channels: SoS magnitude, Roemer phase.
    rng = np.random.default_rng(8)
    coils = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    gain = np.sqrt(np.sum(np.abs(coils) ** 2))
    signal, sd, n = 0.7 * np.exp(0.4j), 0.5, 400_000
    noise = (rng.standard_normal((n, 4)) + 1j * rng.standard_normal((n, 4))) * sd
    channels = coils * signal + noise
    explicit_magnitude = np.sqrt(np.sum(np.abs(channels) ** 2, axis=1))
    explicit_phase = np.angle(np.sum(np.conj(coils) * channels, axis=1))
    magnitude, phase = _receive(np.full(n, signal, np.complex64), np.full(n, gain, np.float32), 4, sd,
                                np.random.default_rng(9))
    # E[SoS^2] = |C S|^2 + 2 N sd^2 exactly; both samples agree with it and with each other.
    expected_power = gain ** 2 * abs(signal) ** 2 + 2 * 4 * sd ** 2
    assert np.mean(explicit_magnitude ** 2) == pytest.approx(expected_power, rel=0.01)
    assert np.mean(magnitude.astype(np.float64) ** 2) == pytest.approx(expected_power, rel=0.01)
    assert np.mean(magnitude) == pytest.approx(np.mean(explicit_magnitude), rel=0.005)
    assert np.std(magnitude) == pytest.approx(np.std(explicit_magnitude), rel=0.01)
    for values in (explicit_phase, phase):
        assert np.angle(np.mean(np.exp(1j * values))) == pytest.approx(0.4, abs=0.005)
    assert np.std(wrap_to_pi(phase - 0.4)) == pytest.approx(np.std(wrap_to_pi(explicit_phase - 0.4)), rel=0.01)
