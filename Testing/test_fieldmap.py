"""Multi-echo field fit: exact recovery of a known field and offset, noise SD, validation."""

from pathlib import Path

import numpy as np
import pytest

from qsmlib import QSMInputError
from qsmlib.fieldmap import fit_multi_echo_field, trusted_field_mask
from qsmlib.unwrap import unwrap_laplacian

SHAPE = (40, 44, 36)
VOXEL_SIZE = (1.0, 1.0, 1.5)
TE_S = np.array([0.004, 0.009, 0.014, 0.019, 0.024])


def coordinates():
    return np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * d for n, d in zip(SHAPE, VOXEL_SIZE)],
                       indexing="ij", sparse=True)


def known_maps():
    """Field of several hundred Hz, a smooth offset, a mask, R2* decay.

    The median field is within +-1 / (2 (TE2 - TE1)) = +-100 Hz, as after a shim: the
    spatial unwrap fixes the global 2 pi ambiguity that way (documented).
    """
    x, y, z = coordinates()
    field = 20.0 + 9.0 * x - 6.0 * y + 5.0 * z + 0.25 * (x ** 2 - y ** 2) + 0.2 * x * z
    offset = 2.5 * np.sin(0.07 * x + 0.05 * y) + 0.8 * np.cos(0.04 * z) - 1.0
    mask = (x / 18) ** 2 + (y / 20) ** 2 + (z / 24) ** 2 <= 1
    r2star = 25.0 + 0.3 * x
    return field, offset, mask, r2star


def gre_signal(field, offset, r2star, te, s0=1.0):
    t = np.asarray(te)
    phase = offset[..., None] + 2 * np.pi * field[..., None] * t
    magnitude = s0 * np.exp(-r2star[..., None] * t) * np.ones(phase.shape)
    return magnitude, phase


def wrapped(phase):
    return np.angle(np.exp(1j * phase)).astype(np.float32)


def test_noiseless_field_and_offset_are_exact():
    field, offset, mask, r2star = known_maps()
    assert np.ptp(field[mask]) > 500
    magnitude, phase = gre_signal(field, offset, r2star, TE_S)
    # Many wraps at the last echo.
    assert np.abs(2 * np.pi * field[mask] * TE_S[-1]).max() > 10 * np.pi
    result = fit_multi_echo_field(magnitude, wrapped(phase), TE_S, mask, VOXEL_SIZE)
    assert result.field_hz.dtype == np.float32
    assert np.abs(result.field_hz - field)[mask].max() < 1e-3
    offset_error = np.angle(np.exp(1j * (result.phase_offset_rad - offset)))[mask]
    assert np.abs(offset_error).max() < 1e-4
    assert result.residual[mask].max() < 1e-5
    for volume in (result.field_hz, result.phase_offset_rad, result.field_sd_hz, result.residual):
        assert np.all(volume[~mask] == 0)


def test_unequal_echo_spacing_is_exact():
    field, offset, mask, r2star = known_maps()
    te = np.array([0.003, 0.0055, 0.011, 0.019, 0.0205])
    magnitude, phase = gre_signal(field, offset, r2star, te)
    result = fit_multi_echo_field(magnitude, wrapped(phase), te, mask, VOXEL_SIZE)
    assert np.abs(result.field_hz - field)[mask].max() < 1e-3


def test_two_echoes_are_exact():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star, TE_S[:2])
    result = fit_multi_echo_field(magnitude, wrapped(phase), TE_S[:2], mask, VOXEL_SIZE)
    assert np.abs(result.field_hz - field)[mask].max() < 1e-3


def test_single_echo_gives_phase_over_two_pi_te():
    field, offset, mask, r2star = known_maps()
    field = 0.2 * field      # keep the single-echo phase free of undersampled steps
    te = TE_S[2:3]
    magnitude, phase = gre_signal(field, offset, r2star, te)
    # A 3D volume is one echo; the offset stays in the field (documented).
    result = fit_multi_echo_field(magnitude[..., 0], wrapped(phase[..., 0]), te, mask, VOXEL_SIZE)
    expected = field + offset / (2 * np.pi * te[0])
    error = (result.field_hz - expected)[mask]
    turns = np.round(np.median(error) * te[0])        # one global 2 pi ambiguity: 1/TE Hz
    assert np.abs(error - turns / te[0]).max() < 1e-3
    assert np.all(result.phase_offset_rad == 0)


def test_noise_sd_matches_the_scatter_of_the_field():
    rng = np.random.default_rng(3)
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star, TE_S)
    sigma = 0.02      # SNR 50 at the first echo
    signal = magnitude * np.exp(1j * phase)
    signal = signal + sigma * (rng.standard_normal(signal.shape)
                               + 1j * rng.standard_normal(signal.shape))
    result = fit_multi_echo_field(np.abs(signal), np.angle(signal), TE_S, mask, VOXEL_SIZE)
    assert result.noise_sd_source == "residual"
    assert abs(result.noise_sd / sigma - 1) < 0.1
    error = (result.field_hz - field)[mask]
    assert abs(np.mean(error)) < 0.05
    predicted = np.sqrt(np.mean(result.field_sd_hz[mask] ** 2))
    assert abs(np.std(error) / predicted - 1) < 0.2
    # Standardised errors have unit spread.
    z = error / result.field_sd_hz[mask]
    assert abs(np.std(z) - 1) < 0.2
    # The fit is good: relative residual near the noise level.
    assert np.median(result.residual[mask]) < 0.05


def test_given_noise_sd_and_the_weighted_slope_variance():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star, TE_S)
    result = fit_multi_echo_field(magnitude, wrapped(phase), TE_S, mask, VOXEL_SIZE, noise_sd=0.01)
    assert result.noise_sd_source == "given"
    # var(f) = sigma^2 / ((2 pi)^2 sum_n w_n (t_n - tbar_w)^2) with w = |S|^2.
    voxel = tuple(n // 2 for n in SHAPE)
    w = magnitude[voxel] ** 2
    tbar = np.sum(w * TE_S) / np.sum(w)
    expected = 0.01 / (2 * np.pi * np.sqrt(np.sum(w * (TE_S - tbar) ** 2)))
    assert result.field_sd_hz[voxel] == pytest.approx(expected, rel=1e-5)


def test_laplacian_unwrapper_can_be_plugged_in():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star, TE_S)
    result = fit_multi_echo_field(magnitude, wrapped(phase), TE_S, mask, VOXEL_SIZE,
                                  unwrap=unwrap_laplacian)
    # The echo-difference steps are below pi and there is no noise: once the Laplacian
    # estimate is snapped to the measured phase plus whole turns, the fit is exact up to 1/dTE.
    error = (result.field_hz - field)[mask]
    turns = np.round(np.median(error) * (TE_S[1] - TE_S[0]))
    assert np.abs(error - turns / (TE_S[1] - TE_S[0])).max() < 1e-3


def test_invalid_inputs_raise_clear_errors():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star, TE_S)
    phase = wrapped(phase)
    with pytest.raises(QSMInputError, match="same grid"):
        fit_multi_echo_field(magnitude[..., :4], phase, TE_S, mask, VOXEL_SIZE)
    with pytest.raises(QSMInputError, match="echo times given for 5 echoes"):
        fit_multi_echo_field(magnitude, phase, TE_S[:4], mask, VOXEL_SIZE)
    with pytest.raises(QSMInputError, match="milliseconds"):
        fit_multi_echo_field(magnitude, phase, TE_S * 1000, mask, VOXEL_SIZE)
    with pytest.raises(QSMInputError, match="mask"):
        fit_multi_echo_field(magnitude, phase, TE_S, mask[:-1], VOXEL_SIZE)
    with pytest.raises(QSMInputError, match="integer"):
        fit_multi_echo_field(magnitude, np.round(phase * 1000).astype(np.int16), TE_S, mask,
                             VOXEL_SIZE)
    with pytest.raises(QSMInputError, match="negative"):
        fit_multi_echo_field(-magnitude, phase, TE_S, mask, VOXEL_SIZE)
    with pytest.raises(QSMInputError, match="4D"):
        fit_multi_echo_field(magnitude[0, ..., 0], phase[0, ..., 0], TE_S[:1], mask, VOXEL_SIZE)
    with pytest.raises(QSMInputError, match="unwrap"):
        fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, unwrap="laplacian")


def test_real_scan_phase_evolves_linearly_without_jumps():
    import nibabel as nib

    from qsmlib.masking import brain_mask

    folder = Path(__file__).resolve().parent / "data" / "romeo-small"
    magnitude_image = nib.load(str(folder / "Mag.nii.gz"))
    magnitude = np.asarray(magnitude_image.dataobj, dtype=np.float32)
    raw = np.asarray(nib.load(str(folder / "Phase.nii.gz")).dataobj, dtype=np.float64)
    # The stored phase is a scaled 12-bit phase: min-max rescale to [-pi, pi).
    phase = (raw - raw.min()) / (raw.max() - raw.min()) * 2 * np.pi - np.pi
    voxel_size = tuple(float(v) for v in magnitude_image.header.get_zooms()[:3])
    te = [0.004, 0.008, 0.012]           # the data authors' assumption (3 T)
    mask = brain_mask(magnitude, voxel_size)
    result = fit_multi_echo_field(magnitude, phase, te, mask, voxel_size)
    # Linear phase evolution: the complex fit residual is at the noise level.
    assert np.median(result.residual[mask]) < 0.05
    assert result.noise_sd_source == "residual"
    # No 2 pi jumps: neighbouring field values differ by far less than 1 / dTE = 250 Hz.
    jumps, pairs = 0, 0
    for axis in range(3):
        both = np.delete(mask, 0, axis) & np.delete(mask, -1, axis)
        step = np.abs(np.diff(result.field_hz, axis=axis))[both]
        jumps += int(np.sum(step > 125))
        pairs += step.size
    assert jumps < 1e-3 * pairs


def test_phase_given_unwrapped_is_fitted_as_it_is():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset + 4 * np.pi, r2star, TE_S)
    result = fit_multi_echo_field(magnitude, phase, TE_S, mask, VOXEL_SIZE, unwrap=None)
    assert np.abs(result.field_hz - field)[mask].max() < 1e-3
    offset_error = np.angle(np.exp(1j * (result.phase_offset_rad - offset)))[mask]
    assert np.abs(offset_error).max() < 1e-4
    single = fit_multi_echo_field(magnitude[..., 2], phase[..., 2], TE_S[2:3], mask, VOXEL_SIZE,
                                  unwrap=None)
    expected = field + (offset + 4 * np.pi) / (2 * np.pi * TE_S[2])
    assert np.abs(single.field_hz - expected)[mask].max() < 1e-2


def test_voxels_without_signal_are_not_trusted():
    field, offset, mask, r2star = known_maps()
    magnitude, phase = gre_signal(field, offset, r2star, TE_S)
    rng = np.random.default_rng(5)
    noisy = magnitude + rng.normal(0, 0.01 * magnitude[mask].mean(), magnitude.shape)
    dark = np.zeros(mask.shape, dtype=bool)
    dark[tuple(rng.integers(0, min(mask.shape), size=(3, 20)))] = True
    dark &= mask
    noisy[dark] = np.abs(rng.normal(0, 0.01 * magnitude[mask].mean(), (dark.sum(), len(TE_S))))
    phase = np.where(dark[..., None], rng.uniform(-np.pi, np.pi, phase.shape), phase)
    fit = fit_multi_echo_field(np.abs(noisy), wrapped(phase), TE_S, mask, VOXEL_SIZE)
    trusted = trusted_field_mask(fit, mask)
    assert not trusted[dark].any()
    assert trusted[mask & ~dark].mean() > 0.999
