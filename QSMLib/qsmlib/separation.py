"""Susceptibility source separation: paramagnetic and diamagnetic parts of each voxel.

A voxel's susceptibility sums paramagnetic sources (iron, deoxyhaemoglobin)
and diamagnetic ones (myelin, calcium). Two measurements tell them apart
(chi-separation, Shin et al. 2021):

- the local field sees their sum, ``field = D * (chi_pos + chi_neg)``;
- the reversible transverse relaxation R2' = R2* - R2 sees their absolute
  values: in the static dephasing regime (Yablonskiy & Haacke 1994) each
  kind of source dephases the spins in proportion to its amount,
  ``R2' = Dr_pos chi_pos - Dr_neg chi_neg`` with ``chi_pos >= 0``,
  ``chi_neg <= 0`` and ``Dr`` the relaxometric constant (Hz per ppm).

:func:`chi_separation` solves both equations jointly::

    min  1/2 ||W_f (D (p + n) - f)||^2 + 1/2 ||W_r (p - beta n - r)||^2
         + lam (TV(p) + TV(n))      subject to  p >= 0, n <= 0, p = n = 0 outside the mask

with ``p = chi_pos``, ``n = chi_neg`` (ppm), ``f`` the local field (ppm),
``r = R2' / Dr_pos`` (ppm) and ``beta = Dr_neg / Dr_pos``. Every weight comes
from the measured noise: ``W_f`` and ``W_r`` are the inverse noise SDs of the
field (the multi-echo fit's field SD, or the field's own high-pass noise) and
of R2' (from those of R2* and R2), both scaled by the median field SD; the TV
weight follows the same rule as the TV-ADMM inversion
(:func:`qsmlib.inversion.tv_weight.tv_weight_from_noise`). The solver is an
ADMM in which every term is split off (Boyd et al. 2011), so that each step
is closed-form: the coupled (p, n) update is a 2 x 2 system per spatial
frequency, the data terms are voxel-wise weighted means, TV a shrinkage and
the sign constraints projections.

Without an R2 measurement, :func:`chi_separation_r2star` takes R2 from a
tissue model (a literature constant of brain parenchyma, :data:`R2_TISSUE_MODEL_HZ`), as
the R2*-only variants of chi-separation and APART-QSM do; its error is that
of the model (see the README's accuracy table).
"""

import numpy as np

from . import fourier
from .dipole import dipole_kernel
from .errors import QSMInputError
from .inversion._grid import DEFAULT_PAD_VOXELS, WorkGrid
from .inversion.gradient import backward_divergence, forward_differences, gradient_norm_squared
from .inversion.tv_weight import TV_WEIGHT_RULE, field_noise_sd, tv_weight_from_noise
from .validation import as_mask, as_volume, as_voxel_size, check_b0, check_count, check_number

#: Relaxometric constant at 3 T (Hz per ppm) for both kinds of source: Shin et al. (2021)
#: used 137 Hz/ppm at 3 T for the paramagnetic and the diamagnetic part alike. In the
#: static dephasing regime (Yablonskiy & Haacke 1994) R2' grows linearly with B0, so the
#: constant is scaled by B0 / 3 T (:func:`relaxometric_constant`). Override it per study.
DR_3T_HZ_PER_PPM = 137.0
#: Field strength (T) at which :data:`DR_3T_HZ_PER_PPM` holds.
DR_REFERENCE_B0_T = 3.0

#: R2 (1/s) of brain parenchyma at 3 T for the R2*-only method: the mean of white matter
#: (T2 about 70 ms) and grey matter (about 85-100 ms), 1 / 77 ms. Sources: Wansapura JP,
#: Holland SK, Dunn RS, Ball WS. NMR relaxation times in the human brain at 3.0 tesla.
#: J Magn Reson Imaging 1999;9:531-538; Stanisz GJ, Odrobina EE, Pun J, et al. T1, T2
#: relaxation and magnetization transfer in tissue at 3T. Magn Reson Med 2005;54:507-512.
#: R2 of brain tissue rises much less with B0 than R2' does; the same value is used at every
#: field, which makes the method less accurate away from 3 T. Override it (``r2_hz``) where a
#: better model exists.
R2_TISSUE_MODEL_HZ = 13.0

DEFAULT_MAX_ITER = 300
#: Stop at 0.2 % relative change of (chi_pos, chi_neg) inside the mask.
DEFAULT_TOL = 2e-3
#: ADMM penalties, in the solver's normalised units (data weights of median 1): the TV
#: split's in mm^2 as in TV-ADMM, the sign constraints' and the data splits' dimensionless.
#: They change the speed of convergence, not the solution. Chosen for speed on the noise-free
#: known-answer phantom of the tests (these reach 0.6 % NRMSE in 400 iterations at lam = 1e-6,
#: where 1 / 0.05 / 0.02 reach 2.1 %) and checked on the 1 mm head (about 45 iterations).
RHO_TV = 0.01
RHO_SIGN = 0.01
RHO_DATA = 0.1


def relaxometric_constant(b0_t, *, dr_3t=DR_3T_HZ_PER_PPM):
    """The relaxometric constant Dr (Hz per ppm) at field strength ``b0_t`` (T).

    ``Dr = dr_3t * b0_t / 3``: R2' of static dephasing is proportional to B0
    (Yablonskiy & Haacke 1994).

    References
    ----------
    .. [1] Shin HG, Lee J, Yun YH, et al. chi-separation: Magnetic susceptibility
       source separation toward iron and myelin mapping in the brain.
       NeuroImage 2021;240:118371.
    .. [2] Yablonskiy DA, Haacke EM. Theory of NMR signal behavior in magnetically
       inhomogeneous tissues: the static dephasing regime. Magn Reson Med
       1994;32:749-763.
    """
    b0_t = check_b0(b0_t, name="b0_t")
    dr_3t = check_number(dr_3t, "dr_3t", strict=True, unit="Hz/ppm")
    return float(dr_3t * b0_t / DR_REFERENCE_B0_T)


def r2prime_map(r2star_hz, r2_hz, mask=None):
    """R2' = R2* - R2 (1/s), 0 outside ``mask``; negative values are kept (they are noise).

    Parameters
    ----------
    r2star_hz : ndarray, shape (X, Y, Z)
    r2_hz : float or ndarray, shape (X, Y, Z)
        Measured R2 map, or a tissue-model constant.
    mask : ndarray, optional
    """
    r2star = as_volume(r2star_hz, "r2star_hz")
    r2 = _scalar_or_volume(r2_hz, r2star.shape, "r2_hz")
    out = (r2star - r2).astype(np.float32)
    if mask is not None:
        out[~as_mask(mask, r2star.shape)] = 0
    return out


def chi_separation(field_ppm, r2star_hz, r2_hz, mask, voxel_size, *, b0_t, b0_dir=(0, 0, 1),
                   dr_pos=None, dr_neg=None, field_noise_sd_ppm=None, r2star_noise_sd_hz=None,
                   r2_noise_sd_hz=None, lam="auto", max_iter=DEFAULT_MAX_ITER, tol=DEFAULT_TOL, callback=None,
                   pad_voxels=DEFAULT_PAD_VOXELS, record=None):
    """Paramagnetic and diamagnetic susceptibility from the local field and R2' (chi-separation).

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local (background-free) field in ppm of B0.
    r2star_hz : ndarray, shape (X, Y, Z)
        R2* (1/s) of the same acquisition.
    r2_hz : float or ndarray, shape (X, Y, Z)
        R2 (1/s): a measured map (multi-echo spin echo, T2 mapping: R2 = 1/T2),
        or a tissue-model constant (see :func:`chi_separation_r2star`).
    mask : ndarray, shape (X, Y, Z)
        Brain mask; both parts are zero outside it.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    b0_t : float
        Field strength in T (for the relaxometric constants).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates.
    dr_pos, dr_neg : float, optional
        Relaxometric constants (Hz per ppm) of the paramagnetic and the
        diamagnetic part. Default: :func:`relaxometric_constant` of ``b0_t``
        for both (Shin et al. 2021).
    field_noise_sd_ppm : float or ndarray, optional
        Noise SD of the field (ppm), a number or a map, for example the
        multi-echo fit's field SD. Default: measured from the field
        (:func:`qsmlib.inversion.tv_weight.field_noise_sd`).
    r2star_noise_sd_hz, r2_noise_sd_hz : float or ndarray, optional
        Noise SD of R2* and of R2 (1/s). Default: measured from each map in
        the same way; 0 for a constant R2 (a model has no noise, only error).
    lam : float or "auto", optional
        TV weight (ppm mm) of each part. ``"auto"``: the TV-ADMM rule, ``gain * h *
        sigma_f`` with ``h`` the mean voxel edge (mm) and ``sigma_f`` the median
        field noise SD.
    max_iter : int, optional
    tol : float, optional
        Stop when the relative change of (chi_pos, chi_neg) inside the mask
        falls below this.
    callback : callable, optional
        ``callback(iteration, relative_change)`` after every iteration; it may
        raise :class:`qsmlib.Cancelled`, which propagates.
    pad_voxels : int or sequence of 3 int, optional
        Zero margin around the mask's bounding box before the FFT size.
    record : dict, optional
        Filled with what was chosen (weights, noise, constants, iterations),
        JSON-ready, for the provenance.

    Returns
    -------
    chi_pos, chi_neg : ndarray of float32, shape (X, Y, Z)
        Paramagnetic (>= 0) and diamagnetic (<= 0) susceptibility in ppm, zero
        outside the mask. Their sum is the total susceptibility fitted to the
        field; unlike a QSM it has an absolute zero (R2' fixes it), so do not
        re-reference the parts.

    Raises
    ------
    QSMInputError
        On invalid arrays, shapes, constants, weights or options.
    Cancelled
        When raised by ``callback``.

    References
    ----------
    .. [1] Shin HG, Lee J, Yun YH, et al. chi-separation: Magnetic susceptibility
       source separation toward iron and myelin mapping in the brain.
       NeuroImage 2021;240:118371.
    .. [2] Yablonskiy DA, Haacke EM. Theory of NMR signal behavior in magnetically
       inhomogeneous tissues: the static dephasing regime. Magn Reson Med
       1994;32:749-763.
    .. [3] Boyd S, Parikh N, Chu E, Peleato B, Eckstein J. Distributed
       optimization and statistical learning via the alternating direction
       method of multipliers. Found Trends Mach Learn 2011;3:1-122.
    .. [4] Bilgic B, Fan AP, Polimeni JR, et al. Fast quantitative susceptibility
       mapping with L1-regularization and automatic parameter selection.
       Magn Reson Med 2014;72:1444-1459.
    """
    field = as_volume(field_ppm, "field_ppm")
    shape = field.shape
    mask = as_mask(mask, shape)
    if not mask.any():
        raise QSMInputError("mask: it is empty; give a brain mask with voxels in it")
    voxel_size = as_voxel_size(voxel_size)
    r2star = as_volume(r2star_hz, "r2star_hz")
    if r2star.shape != shape:
        raise QSMInputError(f"r2star_hz has shape {r2star.shape} but the field has shape {shape}; "
                            "they must have the same voxels")
    r2_is_map = np.ndim(r2_hz) == 3
    r2 = _scalar_or_volume(r2_hz, shape, "r2_hz")
    b0_t = check_b0(b0_t, name="b0_t")
    dr_default = relaxometric_constant(b0_t)
    dr_pos = dr_default if dr_pos is None else check_number(dr_pos, "dr_pos", strict=True, unit="Hz/ppm")
    dr_neg = dr_default if dr_neg is None else check_number(dr_neg, "dr_neg", strict=True, unit="Hz/ppm")
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol")
    if callback is not None and not callable(callback):
        raise QSMInputError(f"callback: {callback!r} is not callable; "
                            "give a function callback(iteration, residual) or None")

    # Noise of each measurement, as maps inside the mask.
    sigma_f, f_source = _noise(field_noise_sd_ppm, field, mask, "field_noise_sd_ppm")
    sigma_r2s, r2s_source = _noise(r2star_noise_sd_hz, r2star, mask, "r2star_noise_sd_hz")
    if r2_is_map:
        sigma_r2, r2_source = _noise(r2_noise_sd_hz, r2, mask, "r2_noise_sd_hz")
    else:
        sigma_r2 = np.zeros(shape, np.float32) if r2_noise_sd_hz is None else \
            _noise(r2_noise_sd_hz, r2, mask, "r2_noise_sd_hz")[0]
        r2_source = "tissue-model constant (no noise)" if r2_noise_sd_hz is None else "given"
    sigma_r2p = np.sqrt(sigma_r2s.astype(np.float64) ** 2 + sigma_r2.astype(np.float64) ** 2)
    sigma0 = float(np.median(sigma_f[mask]))
    if not sigma0 > 0:
        raise QSMInputError("field noise: its median SD in the mask is 0; give field_noise_sd_ppm > 0")
    floor_r = max(float(np.median(sigma_r2p[mask])) * 1e-3, 1e-6)
    weight_f = (sigma0 / np.maximum(sigma_f, sigma0 * 1e-3)).astype(np.float32)
    weight_r = (sigma0 * dr_pos / np.maximum(sigma_r2p, floor_r)).astype(np.float32)

    if isinstance(lam, str) and lam == "auto":
        lam_value = tv_weight_from_noise(sigma0, voxel_size, TV_WEIGHT_RULE.gain, TV_WEIGHT_RULE.voxel_exponent)
        lam_source = "automatic: gain * mean voxel edge * median field noise SD (the TV-ADMM rule)"
    else:
        lam_value = check_number(lam, "lam", strict=True, unit="ppm mm")
        lam_source = "given"

    r2prime = r2star - r2
    target_r = np.where(mask, r2prime / np.float32(dr_pos), np.float32(0)).astype(np.float32)
    grid = WorkGrid(field, mask, voxel_size, b0_dir, pad_voxels)
    p, n, iterations, change = _solve(grid, grid.field, grid_values(grid, target_r), grid_values(grid, weight_f),
                                      grid_values(grid, weight_r), dr_neg / dr_pos, lam_value, max_iter, tol,
                                      callback)
    chi_pos = np.maximum(grid.to_image(p), 0)
    chi_neg = np.minimum(grid.to_image(n), 0)
    if record is not None:
        record.update({
            "method": "chi-separation (Shin et al. 2021), TV-regularised ADMM",
            "dr_pos_hz_per_ppm": dr_pos, "dr_neg_hz_per_ppm": dr_neg,
            "dr_source": "Shin et al. 2021: 137 Hz/ppm at 3 T, scaled with B0" if dr_pos == dr_default else "given",
            "r2": "map" if r2_is_map else float(np.asarray(r2_hz)),
            "lam": lam_value, "lam_source": lam_source,
            "field_noise_sd_ppm": sigma0, "field_noise_source": f_source,
            "r2star_noise_sd_hz": float(np.median(sigma_r2s[mask])), "r2star_noise_source": r2s_source,
            "r2_noise_sd_hz": float(np.median(sigma_r2[mask])), "r2_noise_source": r2_source,
            "r2prime_weight_relative_to_field": float(np.median(weight_r[mask]) / np.median(weight_f[mask])),
            "iterations": iterations, "final_change": change, "max_iter": max_iter, "tol": tol,
            "converged": bool(change < tol)})
    return chi_pos, chi_neg


def chi_separation_r2star(field_ppm, r2star_hz, mask, voxel_size, *, b0_t, r2_hz=R2_TISSUE_MODEL_HZ, **options):
    """Chi-separation from gradient-echo data alone: R2 from a tissue model.

    R2' = R2* - R2 with R2 a constant of brain parenchyma
    (:data:`R2_TISSUE_MODEL_HZ`, 13 1/s, from the literature at 3 T), as the
    R2*-only variants of chi-separation (Shin et al. 2021) and APART-QSM (Li et
    al. 2023) replace the missing spin-echo measurement by a model. Where a
    tissue's R2 differs from the model, its R2' and so both parts are off by
    ``(R2_true - r2_hz) / (2 Dr)`` ppm in opposite directions; the total
    ``chi_pos + chi_neg`` is not affected.

    Parameters
    ----------
    field_ppm, r2star_hz, mask, voxel_size, b0_t
        As :func:`chi_separation`.
    r2_hz : float, optional
        The model's R2 (1/s).
    **options
        Passed to :func:`chi_separation`.

    Returns
    -------
    chi_pos, chi_neg : ndarray of float32

    References
    ----------
    .. [1] Shin HG, Lee J, Yun YH, et al. chi-separation: Magnetic susceptibility
       source separation toward iron and myelin mapping in the brain.
       NeuroImage 2021;240:118371.
    .. [2] Li Z, Feng R, Liu Q, et al. APART-QSM: An improved sub-voxel
       quantitative susceptibility mapping for susceptibility source separation
       using an iterative data fitting method. NeuroImage 2023;274:120148.
    .. [3] Wansapura JP, Holland SK, Dunn RS, Ball WS. NMR relaxation times in
       the human brain at 3.0 tesla. J Magn Reson Imaging 1999;9:531-538.
    """
    if np.ndim(r2_hz) != 0:
        raise QSMInputError("r2_hz: the R2*-only method takes one model value (1/s); "
                            "for a measured R2 map use chi_separation")
    r2_hz = check_number(r2_hz, "r2_hz", unit="1/s")
    return chi_separation(field_ppm, r2star_hz, r2_hz, mask, voxel_size, b0_t=b0_t, **options)


def grid_values(grid, image):
    """A full-image float32 map on the solver's padded grid (0 in the padding)."""
    return grid.on_grid_values(image).astype(np.float32)


def _scalar_or_volume(value, shape, name):
    if np.ndim(value) == 0:
        number = float(check_number(value, name, minimum=-np.inf))
        return np.full(shape, number, dtype=np.float32)
    volume = as_volume(value, name)
    if volume.shape != tuple(shape):
        raise QSMInputError(f"{name} has shape {volume.shape} but the field has shape {tuple(shape)}; "
                            "they must have the same voxels")
    return volume


def _noise(given, data, mask, name):
    """Noise SD map (float32) of ``data`` inside ``mask``: given (number or map) or measured."""
    shape = data.shape
    if given is None:
        sigma = field_noise_sd(np.where(mask, data, 0), mask)
        if not sigma > 0:
            raise QSMInputError(f"{name}: the measured noise of the map is 0 (noise-free data?); "
                                f"give {name} explicitly")
        return np.full(shape, sigma, dtype=np.float32), "measured: high-pass MAD (Donoho & Johnstone 1994)"
    if np.ndim(given) == 0:
        value = check_number(given, name, strict=True)
        return np.full(shape, value, dtype=np.float32), "given"
    values = as_volume(given, name)
    if values.shape != shape:
        raise QSMInputError(f"{name} has shape {values.shape} but the field has shape {shape}")
    inside = values[mask]
    if not np.all(np.isfinite(inside)) or np.any(inside < 0):
        raise QSMInputError(f"{name}: noise SDs must be finite and >= 0 inside the mask")
    typical = float(np.median(inside))
    return np.where(mask, values, typical).astype(np.float32), "given map"


def _solve(grid, field, target_r, weight_f, weight_r, beta, lam, max_iter, tol, callback):
    """ADMM with every term split off; returns (p, n, iterations, last relative change) on the padded grid.

    Splits: y = D(p + n) (field), s = p - beta n (R2'), z_p = G p, z_n = G n
    (TV), v_p = p, v_n = n (signs and support); scaled duals for each.
    """
    shape = grid.shape
    spacing = grid.voxel_size
    inv_h = [1.0 / s for s in spacing]
    inside = grid.inside()
    in_mask = inside.astype(np.float32)
    w_f2 = weight_f * weight_f * in_mask
    w_r2 = weight_r * weight_r * in_mask
    rho_f = np.float32(RHO_DATA)
    rho_r = np.float32(RHO_DATA * max(float(np.median(w_r2[inside])), 1e-6))
    rho_g = np.float32(RHO_TV)
    rho_c = np.float32(RHO_SIGN * max(1.0, float(rho_r)))

    kernel = dipole_kernel(shape, spacing, grid.b0_dir)
    k2 = kernel * kernel
    laplace = gradient_norm_squared(shape, spacing)
    a11 = rho_f * k2 + rho_r + rho_g * laplace + rho_c
    a22 = rho_f * k2 + rho_r * np.float32(beta * beta) + rho_g * laplace + rho_c
    a12 = rho_f * k2 - rho_r * np.float32(beta)
    det = a11 * a22 - a12 * a12
    c11 = (a22 / det).astype(np.float32)
    c22 = (a11 / det).astype(np.float32)
    c12 = (-a12 / det).astype(np.float32)
    del a11, a22, a12, det, k2, laplace
    field_gain = (rho_f * kernel).astype(np.float32)

    # Voxel-wise weighted means of the data splits: y = (w^2 f + rho q) / (w^2 + rho).
    data_f = w_f2 * field
    inv_f = (1.0 / (w_f2 + rho_f)).astype(np.float32)
    data_r = w_r2 * target_r
    inv_r = (1.0 / (w_r2 + rho_r)).astype(np.float32)
    threshold = np.float32(lam / rho_g)

    zeros = lambda: np.zeros(shape, dtype=np.float32)  # noqa: E731
    p, n = zeros(), zeros()
    y, u_y = np.where(inside, field, 0).astype(np.float32), zeros()
    s, u_s = target_r.copy(), zeros()
    v_p, v_n, u_p, u_n = zeros(), zeros(), zeros(), zeros()
    z_p, z_n = np.zeros((3,) + shape, np.float32), np.zeros((3,) + shape, np.float32)
    d_p, d_n = np.zeros((3,) + shape, np.float32), np.zeros((3,) + shape, np.float32)
    grad = np.empty((3,) + shape, np.float32)
    scratch, div = zeros(), zeros()
    total_prev = None
    change = 1.0
    iteration = 0
    buf, common, q = zeros(), zeros(), zeros()
    spec_tmp = None
    for iteration in range(1, max_iter + 1):
        # (p, n) update: a 2 x 2 system per spatial frequency (in place, to spare memory traffic).
        np.subtract(y, u_y, out=buf)
        spec_y = fourier.rfft(buf)
        spec_y *= field_gain
        np.subtract(s, u_s, out=common)
        common *= rho_r
        np.subtract(z_p, d_p, out=grad)
        backward_divergence(grad, div, inv_h, scratch)
        np.subtract(v_p, u_p, out=buf)
        buf *= rho_c
        buf += common
        div *= rho_g
        buf -= div
        spec_p = fourier.rfft(buf)
        np.subtract(z_n, d_n, out=grad)
        backward_divergence(grad, div, inv_h, scratch)
        np.subtract(v_n, u_n, out=buf)
        buf *= rho_c
        common *= np.float32(-beta)
        buf += common
        div *= rho_g
        buf -= div
        spec_n = fourier.rfft(buf)
        spec_p += spec_y
        spec_n += spec_y
        if spec_tmp is None:
            spec_tmp = np.empty_like(spec_p)
        np.multiply(spec_n, c12, out=spec_y)      # c12 N
        np.multiply(spec_p, c12, out=spec_tmp)    # c12 P
        spec_n *= c22
        spec_n += spec_tmp                        # new N = c12 P + c22 N
        spec_p *= c11
        spec_p += spec_y                          # new P = c11 P + c12 N
        np.add(spec_p, spec_n, out=spec_y)
        spec_y *= kernel
        model_field = fourier.irfft(spec_y, shape).astype(np.float32, copy=False)
        p = fourier.irfft(spec_p, shape).astype(np.float32, copy=False)
        n = fourier.irfft(spec_n, shape).astype(np.float32, copy=False)
        del spec_p, spec_n, spec_y

        # Data splits, TV shrinkage, sign projections, and the scaled duals.
        np.add(model_field, u_y, out=q)
        np.multiply(q, rho_f, out=y)
        y += data_f
        y *= inv_f
        np.subtract(q, y, out=u_y)
        np.multiply(n, np.float32(-beta), out=q)
        q += p
        q += u_s
        np.multiply(q, rho_r, out=s)
        s += data_r
        s *= inv_r
        np.subtract(q, s, out=u_s)
        for x, z, d in ((p, z_p, d_p), (n, z_n, d_n)):
            forward_differences(x, grad, inv_h)
            grad += d
            _shrink(grad, z, threshold, scratch)
            np.subtract(grad, z, out=d)
        np.add(p, u_p, out=q)
        np.maximum(q, 0, out=v_p)
        v_p *= in_mask
        np.subtract(q, v_p, out=u_p)
        np.add(n, u_n, out=q)
        np.minimum(q, 0, out=v_n)
        v_n *= in_mask
        np.subtract(q, v_n, out=u_n)

        change = _relative_change(p, n, total_prev, in_mask)
        if callback is not None:
            callback(iteration, change)
        if change < tol:
            break
        total_prev = (p, n)  # fresh arrays each iteration, never changed in place
    # The constrained iterate: signs and support hold exactly.
    return v_p, v_n, iteration, float(change)


def _shrink(work, out, threshold, radius):
    """Isotropic soft threshold of the (3, ...) vector field ``work`` into ``out``."""
    np.multiply(work[0], work[0], out=radius)
    radius += work[1] * work[1]
    radius += work[2] * work[2]
    np.sqrt(radius, out=radius)
    scale = radius - threshold
    np.maximum(scale, 0, out=scale)
    np.maximum(radius, np.float32(1e-30), out=radius)
    scale /= radius
    np.multiply(work, scale, out=out)
    return out


def _relative_change(p, n, previous, weight):
    if previous is None:
        return 1.0
    flat = weight.ravel()
    norm = float(np.dot((p * p + n * n).ravel(), flat))
    dp = p - previous[0]
    dn = n - previous[1]
    diff = float(np.dot((dp * dp + dn * dn).ravel(), flat))
    return float(np.sqrt(diff / norm)) if norm > 0 else 0.0


__all__ = ["DR_3T_HZ_PER_PPM", "R2_TISSUE_MODEL_HZ", "chi_separation", "chi_separation_r2star",
           "relaxometric_constant", "r2prime_map"]
