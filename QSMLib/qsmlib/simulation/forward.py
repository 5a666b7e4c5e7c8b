"""Multi-echo gradient-echo forward simulation of the head phantom.

The susceptibility map of the whole head (relative to air, so that the zero
padding of the convolution is infinite air) gives the total field through the
dipole kernel (Salomir et al. 2003; Marques & Bowtell 2005). A harmonic
second-order shim over the brain, a smooth receive-phase offset, per-tissue
R2* decay, a smooth receive bias and complex Gaussian noise complete the
signal model, in the spirit of the QSM challenge 2.0 simulation
(Marques et al., MRM 2021).
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..constants import ppm_to_hz
from ..dipole import b0_direction_from_affine, dipole_convolve, point_dipole_convolve
from ..errors import QSMInputError
from ..phase import wrap_to_pi
from ..validation import as_b0_dir, check_b0, check_echo_times
from .phantom import load_head_phantom, susceptibility_map

#: Peak amplitude (rad) of the smooth receive-phase offset inside the head.
PHASE_OFFSET_PEAK_RAD = 1.5
#: Peak relative amplitude of the smooth receive bias of the magnitude inside the head.
RECEIVE_BIAS_PEAK = 0.2
#: Field strength (T) of the tabulated R2* values; R2* scales linearly with B0.
R2STAR_REFERENCE_B0_T = 3.0


@dataclass
class SimulatedGRE:
    """A simulated multi-echo gradient-echo acquisition and its ground truth.

    Attributes
    ----------
    magnitude : ndarray of float32, shape (X, Y, Z, E)
        Magnitude per echo.
    phase : ndarray of float32, shape (X, Y, Z, E)
        Phase per echo in radians, wrapped to [-pi, pi).
    te_s : ndarray of float64, shape (E,)
        Echo times in s.
    b0_t : float
        Field strength in T.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine; ``b0_direction_from_affine(affine) == b0_dir``.
    voxel_size_mm : tuple of 3 float
        Voxel size in mm.
    b0_dir : tuple of 3 float
        B0 direction in voxel coordinates used for the simulation.
    chi_ppm : ndarray of float32, shape (X, Y, Z)
        True susceptibility (ppm, relative to water) inside the brain mask, 0 outside.
    local_field_ppm : ndarray of float32, shape (X, Y, Z)
        Field of ``chi_ppm`` alone (ppm of B0) inside the brain mask, 0 outside.
    total_field_hz : ndarray of float32, shape (X, Y, Z)
        Total field after shimming, in Hz (the field the phase encodes).
    brain_mask : ndarray of bool, shape (X, Y, Z)
    labels : ndarray of uint8, shape (X, Y, Z)
    r2star_hz : ndarray of float32, shape (X, Y, Z)
        R2* at ``b0_t`` in 1/s.
    phase_offset_rad : ndarray of float32, shape (X, Y, Z)
        Echo-independent receive-phase offset in radians.
    noise_sd : float
        SD of the complex Gaussian noise per real and imaginary part (0 when noiseless).
    """

    magnitude: np.ndarray
    phase: np.ndarray
    te_s: np.ndarray
    b0_t: float
    affine: np.ndarray
    voxel_size_mm: Tuple[float, float, float]
    b0_dir: Tuple[float, float, float]
    chi_ppm: np.ndarray
    local_field_ppm: np.ndarray
    total_field_hz: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    r2star_hz: np.ndarray
    phase_offset_rad: np.ndarray
    noise_sd: float = 0.0


def simulate_gre(phantom=None, *, b0_t=3.0, te_s=(0.004, 0.010, 0.016, 0.022, 0.028),
                 snr=100.0, b0_dir=None, texture_ppm=0.01, shim=True, seed=0):
    """Simulate multi-echo gradient-echo magnitude and phase of a head phantom.

    Signal model, per voxel and echo time TE::

        S(TE) = M0 * B * exp(-R2* TE) * exp(i (phi0 + 2 pi f TE)) + noise

    - f (Hz) is the total field: the dipole field (Lorentz-corrected kernel,
      zero padding) of the whole-head susceptibility taken relative to air,
      so that the padding is infinite air and no box boundary appears; with
      ``shim`` the least-squares fit of the harmonic polynomials of order 0
      to 2 (the scanner's shim terms) over the brain is removed.
    - The phase sign is positive: paramagnetic sources raise the frequency.
    - phi0 is a smooth random polynomial (order <= 2, peak about 1.5 rad
      in the head), the same for every echo; B is a smooth receive bias
      (peak about +-20 %).
    - R2* is the tissue's 3 T value scaled linearly with ``b0_t``.
    - The noise is complex Gaussian, SD = (mean first-echo magnitude in the
      brain) / ``snr`` per real and imaginary part.

    Parameters
    ----------
    phantom : HeadPhantom, optional
        Default: the shipped 1 mm head phantom.
    b0_t : float, optional
        Field strength in T.
    te_s : sequence of float, optional
        Echo times in s.
    snr : float or None, optional
        First-echo brain SNR; None or inf gives noiseless data.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates. Default: the direction given by the
        phantom's affine, (0, 0, 1) for the shipped phantom. When given, the
        returned affine is the phantom's rotated about the world origin so that
        ``b0_direction_from_affine(result.affine)`` equals ``b0_dir``.
    texture_ppm : float, optional
        SD of the smooth susceptibility texture in the brain parenchyma (ppm).
    shim : bool, optional
        Remove the second-order harmonic shim fit over the brain.
    seed : int, optional
        Seed of every random component (texture, phase offset, bias, noise);
        the same seed gives the same data apart from the noise level.

    Returns
    -------
    SimulatedGRE

    Raises
    ------
    QSMInputError
        If echo times, field strength, SNR or direction are not valid.

    References
    ----------
    Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0:
    A realistic in silico head phantom for MRI data simulation and evaluation
    of susceptibility mapping procedures. Magn Reson Med 2021;86:526-542.

    Salomir R, de Senneville BD, Moonen CTW. A fast calculation method for
    magnetic field inhomogeneity due to an arbitrary distribution of bulk
    susceptibility. Concepts Magn Reson B 2003;19B:26-34.

    Marques JP, Bowtell R. Application of a Fourier-based method for rapid
    calculation of field inhomogeneity due to spatial variation of magnetic
    susceptibility. Concepts Magn Reson B 2005;25B:65-78.
    """
    te = check_echo_times(te_s, name="te_s")
    b0_t = check_b0(b0_t, name="b0_t")
    noise_free = snr is None
    if not noise_free:
        try:
            snr = float(snr)
        except (TypeError, ValueError):
            raise QSMInputError(f"snr: {snr!r} is not a number; give a positive SNR, "
                                "or None for noiseless data") from None
        if np.isnan(snr) or snr <= 0:
            raise QSMInputError(f"snr: {snr} must be positive; give for example 100, "
                                "or None for noiseless data")
        noise_free = np.isinf(snr)
    phantom, voxel_size, b0_dir, affine = acquisition_geometry(phantom, b0_dir)

    streams = np.random.SeedSequence(seed).spawn(4)
    texture_seed, offset_rng, bias_rng, noise_rng = (
        streams[0], *(np.random.default_rng(s) for s in streams[1:]))
    labels = phantom.labels
    mask = np.asarray(phantom.brain_mask, dtype=bool)
    head = labels != phantom.label_of("air")

    # Fields: the whole head relative to air (total), the brain alone (local truth).
    chi_water = susceptibility_map(phantom, texture_ppm=texture_ppm, seed=texture_seed)
    chi_air = np.float32(phantom.tissues[phantom.label_of("air")].chi_ppm)
    chi_brain = np.where(mask, chi_water, np.float32(0))
    brain_field_ppm = dipole_convolve(chi_brain, voxel_size, b0_dir)
    local_ppm = np.where(mask, brain_field_ppm, np.float32(0))
    # Every other source (tissue outside the brain, and the head relative to air)
    # acts as point dipoles: with sharp edges (9 ppm at air) the k-space kernel
    # rings, and at an oblique B0 that ringing, neither physical nor harmonic in
    # the brain, rivals the local field. A sum of dipoles outside the brain is
    # exactly harmonic inside it, whatever the B0 direction.
    exterior = np.where(head, chi_water - chi_air, np.float32(0)) - chi_brain
    del chi_water
    field_hz = total_field_hz(brain_field_ppm, exterior, mask, voxel_size, b0_dir, b0_t, shim=shim)
    del exterior, brain_field_ppm

    r2star = (phantom.lookup("r2star_3t_hz") * (b0_t / R2STAR_REFERENCE_B0_T)).astype(np.float32)[labels]
    offset, weight = receive_chain(phantom, head, offset_rng, bias_rng)
    magnitude, phase, noise_sd = gre_echoes(weight, r2star, offset, field_hz, te, mask,
                                            None if noise_free else snr, noise_rng)
    return SimulatedGRE(
        magnitude=magnitude, phase=phase, te_s=te, b0_t=b0_t, affine=affine,
        voxel_size_mm=voxel_size, b0_dir=tuple(b0_dir), chi_ppm=chi_brain,
        local_field_ppm=local_ppm, total_field_hz=field_hz, brain_mask=mask.copy(),
        labels=labels.copy(), r2star_hz=r2star, phase_offset_rad=offset, noise_sd=noise_sd)



def acquisition_geometry(phantom, b0_dir):
    """``(phantom, voxel_size, b0_dir, affine)``: the shipped head when ``phantom`` is None;
    B0 from the phantom's affine when ``b0_dir`` is None, else an affine rotated to match it."""
    if phantom is None:
        phantom = load_head_phantom()
    voxel_size = tuple(float(v) for v in phantom.voxel_size_mm)
    if b0_dir is None:
        return phantom, voxel_size, b0_direction_from_affine(phantom.affine), np.array(phantom.affine, np.float64)
    b0_dir = as_b0_dir(b0_dir)
    return phantom, voxel_size, b0_dir, affine_with_b0_direction(phantom.affine, b0_dir)


def total_field_hz(brain_field_ppm, exterior_ppm, mask, voxel_size, b0_dir, b0_t, *, shim):
    """The total field (Hz): the brain's field plus point dipoles of ``exterior_ppm``, less a shim.

    ``exterior_ppm`` is every source outside the brain's own susceptibility (tissue
    outside the brain, and the head relative to air); with ``shim`` the harmonic
    fit inside ``mask`` (:func:`harmonic_shim_fit`) is removed, as a scanner's
    second-order shim would.
    """
    total_ppm = brain_field_ppm + point_dipole_convolve(exterior_ppm, voxel_size, b0_dir)
    if shim:
        total_ppm -= harmonic_shim_fit(total_ppm, mask, voxel_size)
    return ppm_to_hz(total_ppm, b0_t).astype(np.float32)


def receive_chain(phantom, head, offset_rng, bias_rng):
    """A smooth receive phase offset (rad) and the proton density times a smooth receive bias."""
    labels = phantom.labels
    offset = _smooth_polynomial(labels.shape, head, offset_rng, PHASE_OFFSET_PEAK_RAD, with_constant=True)
    weight = phantom.lookup("m0").astype(np.float32)[labels]
    weight *= 1.0 + _smooth_polynomial(labels.shape, head, bias_rng, RECEIVE_BIAS_PEAK, with_constant=False)
    return offset, weight


def gre_echoes(weight, r2star_hz, offset_rad, field_hz, te, mask, snr, noise_rng):
    """Magnitude and wrapped phase per echo of a mono-exponential GRE signal, with complex Gaussian noise.

    The noise SD is the mean first-echo magnitude in ``mask`` over ``snr``;
    ``snr=None`` gives noiseless echoes. Returns ``(magnitude, phase, noise_sd)``,
    float32 (X, Y, Z, E).
    """
    shape = weight.shape + (len(te),)
    magnitude = np.empty(shape, dtype=np.float32)
    phase = np.empty(shape, dtype=np.float32)
    noise_sd = 0.0
    if snr is not None:
        first_echo = weight[mask] * np.exp(-r2star_hz[mask] * np.float32(te[0]))
        noise_sd = float(np.mean(first_echo, dtype=np.float64)) / snr
    for echo, t in enumerate(te):
        mag = weight * np.exp(-r2star_hz * np.float32(t))
        phi = offset_rad + np.float32(2.0 * np.pi * t) * field_hz
        if snr is None:
            magnitude[..., echo] = mag
            phase[..., echo] = wrap_to_pi(phi, np.float32)
        else:
            signal = mag * np.exp(1j * phi.astype(np.complex64))
            signal.real += noise_rng.standard_normal(weight.shape, dtype=np.float32) * np.float32(noise_sd)
            signal.imag += noise_rng.standard_normal(weight.shape, dtype=np.float32) * np.float32(noise_sd)
            magnitude[..., echo] = np.abs(signal)
            phase[..., echo] = wrap_to_pi(np.angle(signal), np.float32)
    return magnitude, phase, noise_sd


def affine_with_b0_direction(affine, b0_dir):
    """Rotate ``affine`` about the world origin so that its B0 direction becomes ``b0_dir``.

    The voxel grid and voxel size are unchanged. B0 is world z, so the
    rotation maps the world direction of ``b0_dir`` (voxel axes combined) onto z.
    """
    affine = np.asarray(affine, dtype=np.float64)
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    source = axes @ np.asarray(b0_dir, dtype=np.float64)
    rotation = _rotation_onto(source / np.linalg.norm(source), np.array([0.0, 0.0, 1.0]))
    rotated = np.eye(4)
    rotated[:3, :3] = rotation
    return rotated @ affine


def _rotation_onto(a, b):
    """Rotation matrix taking unit vector ``a`` onto unit vector ``b`` (Rodrigues)."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1.0 + 1e-12:
        # Opposite vectors: half turn about any axis perpendicular to a.
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    skew = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + c)


def harmonic_terms(shape, voxel_size_mm, centre, scale_mm):
    """The 9 harmonic polynomials of order <= 2 (solid spherical harmonics) as a generator.

    Coordinates are in mm about ``centre`` (voxel index) divided by ``scale_mm``;
    every term solves Laplace's equation, like a scanner's shim coils.
    """
    x, y, z = (((np.arange(n, dtype=np.float32) - np.float32(c)) * np.float32(v / scale_mm))
               .reshape([-1 if a == axis else 1 for a in range(3)])
               for axis, (n, v, c) in enumerate(zip(shape, voxel_size_mm, centre)))
    ones = np.ones((1, 1, 1), dtype=np.float32)
    for term in (ones, x, y, z, x * y, x * z, y * z, x * x - y * y, 2 * z * z - x * x - y * y):
        yield term


def harmonic_shim_fit(field, mask, voxel_size_mm):
    """Least-squares fit over ``mask`` of the order 0-2 harmonic shim terms, evaluated everywhere.

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
    mask : ndarray of bool, shape (X, Y, Z)
    voxel_size_mm : sequence of 3 float

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
        The fitted shim field (subtract it to shim).
    """
    index = np.nonzero(mask)
    centre = [float(np.mean(i)) for i in index]
    scale = 0.5 * max(float(np.ptp(i)) * v for i, v in zip(index, voxel_size_mm)) or 1.0
    terms = list(harmonic_terms(field.shape, voxel_size_mm, centre, scale))
    design = np.stack([np.broadcast_to(t, field.shape)[index] for t in terms], axis=1)
    design = design.astype(np.float64)
    coef = np.linalg.solve(design.T @ design, design.T @ field[index].astype(np.float64))
    fit = np.zeros(field.shape, dtype=np.float32)
    for c, t in zip(coef, terms):
        fit += np.float32(c) * t
    return fit


def _smooth_polynomial(shape, region, rng, peak, *, with_constant):
    """Random polynomial of order <= 2 in normalised voxel coordinates, peak |value| in region = peak."""
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32)
               .reshape([-1 if a == axis else 1 for a in range(3)]) for axis, n in enumerate(shape))
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    if with_constant:
        terms.insert(0, np.ones((1, 1, 1), dtype=np.float32))
    coef = rng.standard_normal(len(terms))
    values = np.zeros(shape, dtype=np.float32)
    for c, t in zip(coef, terms):
        values += np.float32(c) * t
    extreme = float(np.max(np.abs(values[region]))) if region.any() else float(np.max(np.abs(values)))
    return values * np.float32(peak / extreme) if extreme > 0 else values
