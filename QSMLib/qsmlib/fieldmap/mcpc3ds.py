"""MCPC-3D-S: a smooth phase offset from the first two echoes (Eckstein et al., MRM 2018).

The phase offset phi0 of the receive chain is the phase at TE = 0. With the
phase evolution between echoes 1 and 2 unwrapped in space, it is

    phi0 = phi1 - TE1 * unwrap(phi2 - phi1) / (TE2 - TE1),

and, being a property of the coil sensitivities, it is smooth. The estimate is
noisy (the echo difference is scaled by TE1 / dTE), so it is smoothed as a
complex exponential, ``exp(i phi0)`` weighted by the first-echo magnitude
(which ignores its wraps and lets strong voxels dominate), and the angle of
the smoothed sum is the offset. Removing it from every echo leaves phase that
starts at 0 at TE = 0, so the field can be fitted without an intercept.

Two additions to the published smoothing, both aimed at the mask edge, where
a Gaussian average is one-sided and so biased by the local slope of phi0:
the mean linear ramp of phi0 over the mask is demodulated before smoothing
(exact for a ramp, such as the one an echo shift in the readout makes), and
the smoothing is applied twice, the second pass to what the first left
(Tukey's "twicing"), which roughly halves the edge bias of the curvature
on the test geometries.
"""

import numpy as np

from .. import fourier
from ..errors import QSMInputError
from ..phase import wrap_to_pi
from ..unwrap.reliability import unwrap_reliability
from ..validation import as_mask, as_voxel_size, check_echo_times, check_number
from ._inputs import as_echo_volumes, unwrap_checked

#: Gaussian SD (mm) of the offset smoothing. The published default is 10 x 10 x 5 voxels.
#: With two smoothing passes, 4 mm is within 2 % of the lowest field error on the
#: simulated head at SNR 20 and 50 (of 4, 7 and 10 mm) and gives a lower fit residual
#: than larger kernels on the real romeo-small scan; it still averages thousands of
#: voxels at 1 mm.
MCPC_SIGMA_MM = 4.0
#: Smoothing passes, each applied to what the previous ones left (see smooth_phase).
SMOOTHING_PASSES = 2
#: Padding of the FFT smoothing, in Gaussian SDs (the kernel is below 1e-4 beyond).
PAD_SIGMAS = 4.0


def mcpc3ds_phase_offset(magnitude, phase, te_s, mask, voxel_size, *, sigma_mm=MCPC_SIGMA_MM,
                         unwrap=unwrap_reliability):
    """Smooth phase offset (rad) of multi-echo phase by MCPC-3D-S.

    Parameters
    ----------
    magnitude : ndarray, shape (X, Y, Z, E)
        Magnitude per echo, E >= 2 (the first echo weights the smoothing).
    phase : ndarray, shape (X, Y, Z, E)
        Phase per echo in radians, ``phase = phi0 + 2 pi f TE``.
    te_s : sequence of float
        Echo times in seconds, increasing.
    mask : ndarray of bool, shape (X, Y, Z)
        Region whose voxels enter the smoothing.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    sigma_mm : float, optional
        SD of the Gaussian smoothing in mm.
    unwrap : callable, optional
        Spatial unwrapper ``unwrap(phase, mask, voxel_size)`` for the echo 2 -
        echo 1 phase difference; None when ``phase`` is unwrapped already.

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
        Phase offset in radians, wrapped to [-pi, pi), 0 outside ``mask``.

    Raises
    ------
    QSMInputError
        If fewer than two echoes are given, the inputs do not match, or
        ``sigma_mm`` is not positive.

    Notes
    -----
    The global 2 pi ambiguity of the spatial unwrap shifts the offset by
    ``2 pi k TE1 / dTE``; the unwrapper's convention (median echo difference
    in [-pi, pi)) decides it, as it decides the field of
    :func:`fit_multi_echo_field`.

    References
    ----------
    Eckstein K, Dymerska B, Bachrata B, Bogner W, Poljanc K, Trattnig S,
    Robinson SD. Computationally efficient combination of multi-channel phase
    data from multi-echo acquisitions (ASPIRE). Magn Reson Med 2018;79:2996-3006.

    Tukey JW. Exploratory Data Analysis. Reading, MA: Addison-Wesley; 1977
    ("twicing", the second smoothing pass).
    """
    magnitude, phase = as_echo_volumes(magnitude, phase)
    if magnitude.shape[3] < 2:
        raise QSMInputError("MCPC-3D-S needs at least two echoes; with one echo the phase "
                            "offset cannot be separated from the field")
    te = check_echo_times(te_s, n_echoes=magnitude.shape[3], name="te_s")
    mask = as_mask(mask, magnitude.shape[:3])
    voxel_size = as_voxel_size(voxel_size)
    sigma_mm = check_number(sigma_mm, "sigma_mm", strict=True, unit=" mm")
    if unwrap is None:
        step = phase[..., 1].astype(np.float64) - phase[..., 0]
        first = phase[..., 0]
    else:
        step = unwrap_checked(unwrap, wrap_to_pi(phase[..., 1] - phase[..., 0]), mask, voxel_size,
                              magnitude[..., 0])
        first = wrap_to_pi(phase[..., 0])
    raw = first - te[0] * step / (te[1] - te[0])
    offset = smooth_phase(raw, magnitude[..., 0], mask, voxel_size, sigma_mm)
    return np.where(mask, wrap_to_pi(offset, np.float32), np.float32(0))


def smooth_phase(phase, weight, mask, voxel_size, sigma_mm):
    """Angle of the Gaussian-smoothed ``weight * exp(i phase)`` over ``mask`` (float64 volume).

    A weighted average of ``exp(i phase)`` over a neighbourhood cut by the
    mask edge is centred off the voxel, which biases the angle of a sloped
    phase by slope x shift. The mean slope over the mask (a linear ramp, for
    example from an echo shift in the readout) is therefore demodulated
    first and added back after smoothing, so that only the curvature of the
    phase is biased at the edge. The smoothing is an FFT convolution on a
    grid padded by ``PAD_SIGMAS`` SDs, so nothing wraps around. Voxels outside
    ``mask`` contribute nothing.
    """
    voxel_size = tuple(float(v) for v in voxel_size)
    weight = np.where(mask, weight, 0).astype(np.float64)
    ramp = _mean_slope_ramp(phase, weight, voxel_size)
    sigma_voxels = sigma_mm / np.asarray(voxel_size)
    shape = phase.shape
    grid = fourier.padded_shape(shape, np.ceil(PAD_SIGMAS * sigma_voxels).astype(int))
    k = fourier.kspace_coordinates(grid, voxel_size)
    # Fourier transform of a unit-sum Gaussian of SD sigma (mm): exp(-2 pi^2 sigma^2 |k|^2).
    kernel = np.exp(-2.0 * np.pi ** 2 * sigma_mm ** 2 * (k[0] ** 2 + k[1] ** 2 + k[2] ** 2))
    smoothed = ramp
    for _ in range(SMOOTHING_PASSES):
        # Each pass smooths what the previous ones left (Tukey's twicing): the smooth
        # bias of a one-sided average at the mask edge shrinks pass by pass, while
        # noise, which the kernel removes, comes back only slowly.
        left = phase - smoothed
        parts = []
        for component in (np.cos, np.sin):
            spectrum = fourier.rfft(weight * component(left), grid)
            spectrum *= kernel
            parts.append(fourier.crop(fourier.irfft(spectrum, grid), shape))
        smoothed = smoothed + np.arctan2(parts[1], parts[0])
    return smoothed


def _mean_slope_ramp(phase, weight, voxel_size):
    """Linear phase ramp (rad) with the weighted mean neighbour slope of ``phase`` per axis.

    The slope along an axis is the angle of ``sum w_a w_b exp(i (phase_b - phase_a))``
    over neighbour pairs (insensitive to wraps), divided by the voxel size.
    """
    ramp = np.zeros(phase.shape)
    for axis, size in enumerate(voxel_size):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        lower, upper = tuple(lower), tuple(upper)
        pair = weight[lower] * weight[upper]
        difference = phase[upper] - phase[lower]
        step = np.arctan2(np.sum(pair * np.sin(difference)), np.sum(pair * np.cos(difference)))
        view = [1, 1, 1]
        view[axis] = phase.shape[axis]
        ramp = ramp + step * np.arange(phase.shape[axis], dtype=np.float64).reshape(view)
    return ramp
