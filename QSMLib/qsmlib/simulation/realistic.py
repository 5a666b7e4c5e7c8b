"""Realistic multi-echo gradient-echo simulation, kept apart from the inversions' model.

:func:`simulate_gre` (``forward.py``) computes the field on the acquisition
grid with the same discrete k-space kernel the dipole inversions use, on
piecewise-constant tissues whose magnitude edges coincide with their
susceptibility edges. Defaults tuned on such data flatter the inversions.
:func:`simulate_realistic_gre` avoids each of these shortcuts:

1. **Fine grid, exact field.** Everything is computed on the head model's
   native 0.64 mm grid. The field is the exact field of uniformly magnetised
   cuboid voxels (:mod:`.cuboid_dipole`), a linear convolution with generous
   zero padding, not the discrete kernel ``1/3 - (k.b)^2/k^2``. The whole
   head counts relative to air (+9.2 ppm), so air-tissue and bone-tissue
   boundaries create the background field; the brain alone gives the local
   field (the ground truth of background removal).
2. **The scanner's sampling.** The complex signal of each echo is formed on
   the fine grid (proton density, T1 weighting of a spoiled gradient echo,
   R2* decay, the field's phase) and brought to the acquisition grid by
   k-space truncation (:mod:`.kspace_sampling`): partial volume, Gibbs
   ringing and intra-voxel dephasing appear as on a scanner. Acquisition
   voxels finer than 0.64 mm (0.5 mm in-plane, say) are reached by zero
   filling the fine grid's k-space: band-limited interpolation, which adds no
   detail the model does not have.
3. **Texture.** R1 and R2* vary inside every tissue as smooth random fields;
   the susceptibility follows them with the head model's published weights;
   optional white-matter anisotropy with SYNTHETIC fibre directions
   (:mod:`.texture`). The magnitude uses proton density and R1 whose tissue
   means are blurred across tissue boundaries (0.7 mm) while the
   susceptibility keeps sharp edges, so magnitude and susceptibility edges do
   not coincide voxel for voxel.
4. **Scanner imperfections.** A second-order shim fitted over the brain and
   applied with random errors (5 % per term by default, plus a frequency
   offset of a few Hz) leaves a residual background field; a smooth
   receive-phase offset (order <= 2, peak 1.5 rad); complex Gaussian noise per
   echo, either on one channel with a smooth receive bias or on
   ``n_coils`` loop coils (SoS magnitude, phase of the sensitivity-weighted
   combination, drawn exactly without forming the channels).

Ground truth on the acquisition grid:

- ``chi_ppm``: the fine susceptibility of the brain brought to the
  acquisition grid by the SAME k-space truncation as the signal (default,
  ``truth="kspace"``; this is the map whose band-limited field the scanner
  sees), or its volume average over each acquisition voxel
  (``truth="average"``). Both are always returned (``chi_kspace_ppm``,
  ``chi_average_ppm``); metrics depend on the choice.
- ``local_field_ppm``: the fine local field of the brain's sources (computed
  everywhere, so that no artificial edge rings) by the same operator as
  ``chi_ppm``, then masked; ``total_field_hz``: the volume average of the
  fine total field after the shim (the model's box edge would ring in a
  k-space truncation).
- ``brain_mask``: volume fraction of the fine brain mask > 0.5; ``labels``:
  majority vote of the fine labels (brain labels inside the mask);
  ``r2star_hz``, ``r1_hz``: volume averages.

References
----------
Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0:
A realistic in silico head phantom for MRI data simulation and evaluation of
susceptibility mapping procedures. Magn Reson Med 2021;86:526-542.

Marques JP, Bowtell R. Application of a Fourier-based method for rapid
calculation of field inhomogeneity due to spatial variation of magnetic
susceptibility. Concepts Magn Reson B 2005;25B:65-78.

Roemer PB, Edelstein WA, Hayes CE, Souza SP, Mueller OM. The NMR phased array.
Magn Reson Med 1990;16:192-225.
"""

import time
from dataclasses import dataclass, field as dataclass_field
from typing import Optional, Tuple

import numpy as np
import scipy.ndimage as ndi

from ..constants import hz_per_ppm, ppm_to_hz
from ..dipole import b0_direction_from_affine
from ..errors import QSMInputError
from ..phase import wrap_to_pi
from ..validation import as_b0_dir, as_voxel_size, check_b0, check_echo_times
from .cuboid_dipole import cuboid_dipole_operator
from .fine_phantom import load_fine_head_model
from .forward import SimulatedGRE, affine_with_b0_direction, harmonic_terms
from .kspace_sampling import acquisition_grid, kspace_resample
from .phantom import area_average, overlap_matrix
from .texture import tissue_maps

#: Default echo times (s), as :func:`simulate_gre`.
DEFAULT_TE_S = (0.004, 0.010, 0.016, 0.022, 0.028)
#: Peak amplitude (rad) of the smooth receive-phase offset inside the head.
PHASE_OFFSET_PEAK_RAD = 1.5
#: Peak relative amplitude of the single-channel receive bias inside the head.
RECEIVE_BIAS_PEAK = 0.2
#: Relative SD of each shim term's error.
SHIM_ERROR = 0.05
#: SD (Hz) of the residual frequency offset left by the scanner's f0 adjustment.
F0_ERROR_HZ = 3.0
#: Radius (mm) of the loop coils of the multi-channel receive model.
COIL_RADIUS_MM = 50.0
#: Every how many fine voxels per axis the shim fit samples the brain.
SHIM_FIT_STRIDE = 3
#: Ground-truth options for ``chi_ppm``.
TRUTH_OPTIONS = ("kspace", "average")


@dataclass
class RealisticGRE(SimulatedGRE):
    """A realistic simulated acquisition (see :func:`simulate_realistic_gre`).

    Adds to :class:`SimulatedGRE`:

    Attributes
    ----------
    chi_kspace_ppm, chi_average_ppm : ndarray of float32
        The two references for the susceptibility: k-space truncation and
        volume average of the fine map (brain only, 0 outside the mask);
        ``chi_ppm`` is one of them, as ``truth`` says.
    truth : str
        "kspace" or "average".
    r1_hz : ndarray of float32
        Volume-averaged R1 (1/s).
    fine_voxel_size_mm : tuple of 3 float
        Grid of the computation.
    wm_anisotropy : bool
    n_coils : int
    timings_s : dict
        Seconds per stage.
    chi_pos_ppm, chi_neg_ppm, r2_hz, r2prime_hz : ndarray of float32 or None
        With ``separation``: the paramagnetic and diamagnetic parts (same
        reference as ``chi_ppm``, whose sum they are), R2 and R2' (volume
        averages, 1/s) in the brain.
    """

    chi_kspace_ppm: Optional[np.ndarray] = None
    chi_average_ppm: Optional[np.ndarray] = None
    truth: str = "kspace"
    r1_hz: Optional[np.ndarray] = None
    fine_voxel_size_mm: Tuple[float, float, float] = (0.64, 0.64, 0.64)
    wm_anisotropy: bool = False
    n_coils: int = 0
    timings_s: dict = dataclass_field(default_factory=dict)
    chi_pos_ppm: Optional[np.ndarray] = None
    chi_neg_ppm: Optional[np.ndarray] = None
    r2_hz: Optional[np.ndarray] = None
    r2prime_hz: Optional[np.ndarray] = None


def simulate_realistic_gre(model=None, *, voxel_size_mm=1.0, b0_t=3.0, te_s=DEFAULT_TE_S, snr=100.0,
                           b0_dir=None, wm_anisotropy=False, texture=True, n_coils=0, shim=True,
                           shim_error=SHIM_ERROR, f0_error_hz=F0_ERROR_HZ, tr_s=None, flip_deg=15.0,
                           truth="kspace", separation=False, seed=0):
    """Simulate a multi-echo gradient-echo acquisition of the head with a model unlike the inversions'.

    See the module docstring for the model. Signal on the fine grid::

        S(TE) = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-R2* TE) exp(i 2 pi f TE),  E1 = exp(-TR R1)

    then k-space truncation to the acquisition grid, receive-phase offset,
    receive sensitivity and complex Gaussian noise. The phase sign is
    positive: paramagnetic sources raise the frequency.

    Parameters
    ----------
    model : FineHeadModel, optional
        Default: the shipped 0.64 mm head model.
    voxel_size_mm : float or sequence of 3 float, optional
        Acquisition voxel size (mm), e.g. 1, 2, 0.64 (native: no truncation)
        or (0.5, 0.5, 2). The field of view is the model's, enlarged with air
        to a whole number of acquisition voxels; if that is not possible within
        half the model's size, the voxel size is rounded and the one used is
        returned in ``voxel_size_mm``.
    b0_t : float, optional
        Field strength (T); R2* scales linearly, R1 follows the 3 T/7 T table.
    te_s : sequence of float, optional
        Echo times (s).
    snr : float or None, optional
        Mean first-echo magnitude in the brain over the noise SD (per real and
        imaginary part, per channel); None or inf: noiseless.
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel coordinates (default: from the model's affine,
        (0, 0, 1)); the returned affine is rotated to match it.
    wm_anisotropy : bool, optional
        White-matter anisotropy with synthetic fibre directions.
    texture : bool, optional
        R1/R2*/PD texture and the susceptibility that follows it.
    n_coils : int, optional
        0: one channel with a smooth receive bias. N > 0: N loop coils around
        the head, SoS magnitude and sensitivity-weighted (Roemer) phase.
    shim : bool, optional
        Apply the second-order shim (with ``shim_error``); False leaves the
        whole background field.
    shim_error : float, optional
        Relative SD of the error of each shim term.
    f0_error_hz : float, optional
        SD (Hz) of the residual frequency offset.
    tr_s : float, optional
        Repetition time (s); default the last echo time + 8 ms.
    flip_deg : float, optional
        Flip angle (degrees).
    truth : {"kspace", "average"}, optional
        Which reference goes into ``chi_ppm`` (and ``local_field_ppm``).
    separation : bool, optional
        Susceptibility source separation: the brain's susceptibility is the
        sum of a paramagnetic and a diamagnetic part that follow the textures
        with their published weights, and its R2* is R2 + R2' with
        R2' = Dr (chi_pos - chi_neg) (:func:`qsmlib.simulation.separation.separation_parts`);
        their truth is returned. Not with ``wm_anisotropy``.
    seed : int, optional
        Seed of every random component.

    Returns
    -------
    RealisticGRE

    Raises
    ------
    QSMInputError
        If an argument is not valid.
    """
    start = time.perf_counter()
    timings = {}
    te = check_echo_times(te_s, name="te_s")
    b0_t = check_b0(b0_t, name="b0_t")
    noise_free = _noise_free(snr)
    if truth not in TRUTH_OPTIONS:
        raise QSMInputError(f"truth: {truth!r} is not one of {TRUTH_OPTIONS}")
    n_coils = int(n_coils)
    if n_coils < 0:
        raise QSMInputError(f"n_coils: {n_coils} must be 0 (one channel) or a number of coils")
    for name, value in (("shim_error", shim_error), ("f0_error_hz", f0_error_hz)):
        if not np.isfinite(value) or value < 0:
            raise QSMInputError(f"{name}: {value} must be a finite number >= 0")
    tr = float(te[-1] + 0.008 if tr_s is None else tr_s)
    if not np.isfinite(tr) or tr <= te[-1]:
        raise QSMInputError(f"tr_s: {tr_s} must be longer than the last echo time {te[-1]} s")
    if not 0 < float(flip_deg) <= 90:
        raise QSMInputError(f"flip_deg: {flip_deg} must be in (0, 90] degrees")
    if separation and wm_anisotropy:
        raise QSMInputError("separation: the separation model has no anisotropy; leave out wm_anisotropy")
    if model is None:
        model = load_fine_head_model()
    model.validate()
    fine_mm = as_voxel_size(model.voxel_size_mm, "model voxel size")
    acq_requested = as_voxel_size(voxel_size_mm, "voxel_size_mm")
    b0_dir = b0_direction_from_affine(model.affine) if b0_dir is None else as_b0_dir(b0_dir)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    texture_rng, shim_rng, offset_rng, receive_rng, noise_rng, separation_rng = streams
    labels = np.asarray(model.labels)
    mask = np.asarray(model.brain_mask, dtype=bool)
    head = labels != model.air_label

    # 1. Tissue maps on the fine grid, and the magnitude weight of a spoiled gradient echo.
    maps = tissue_maps(model, b0_t=b0_t, b0_dir=b0_dir, rng=texture_rng, wm_anisotropy=wm_anisotropy,
                       texture=texture)
    alpha = np.deg2rad(float(flip_deg))
    e1 = np.exp(-np.float32(tr) * maps.magnitude_r1)
    weight = maps.magnitude_pd * np.float32(np.sin(alpha))
    weight *= (1 - e1) / (1 - np.float32(np.cos(alpha)) * e1)
    weight[~head] = 0
    del e1
    chi, r2star, r1 = maps.chi_ppm, maps.r2star_hz, maps.r1_hz
    parts = None
    if separation:
        from .separation import separation_parts

        parts = separation_parts(model, maps.r2star_dev_3t_hz if texture else None,
                                 maps.r1_dev_3t_hz if texture else None, b0_t=b0_t, rng=separation_rng)
        chi = np.where(mask, parts["chi_pos_ppm"] + parts["chi_neg_ppm"], chi)
        r2star = np.where(mask, parts["r2star_hz"], r2star)
    del maps
    timings["tissue_maps"] = _lap(start)

    # 2. Fields of the cuboid voxels: total (head relative to air) and local (brain only).
    operator = cuboid_dipole_operator(labels.shape, fine_mm, b0_dir)
    chi_air = np.float32(model.tissues[model.air_label].chi_ppm)
    source = chi - chi_air
    source[~head] = 0
    total_ppm = operator.apply(source)
    del source
    chi_brain = np.where(mask, chi, np.float32(0))
    del chi
    local_ppm = operator.apply(chi_brain)
    del operator
    timings["fields"] = _lap(start) - sum(timings.values())

    # 3. Imperfect shim.
    if shim:
        total_ppm -= imperfect_shim(total_ppm, mask, fine_mm, shim_rng, relative_error=shim_error,
                                    f0_error_ppm=f0_error_hz / hz_per_ppm(b0_t))
    field_hz = ppm_to_hz(total_ppm, b0_t).astype(np.float32)
    del total_ppm

    # 5. Acquisition grid: field of view and matrix per axis.
    grid = [acquisition_grid(n, f, a) for n, f, a in zip(labels.shape, fine_mm, acq_requested)]
    fov_shape = tuple(g[0] for g in grid)
    acq_shape = tuple(g[1] for g in grid)
    acq_mm = tuple(float(g[2]) for g in grid)
    before = [(nf - n) // 2 for nf, n in zip(fov_shape, labels.shape)]
    inner = tuple(slice(b, b + n) for b, n in zip(before, labels.shape))
    affine = _acquisition_affine(model.affine, before, fov_shape, acq_shape)
    if not np.allclose(b0_direction_from_affine(affine), b0_dir, atol=1e-9):
        affine = affine_with_b0_direction(affine, b0_dir)

    def to_fov(volume, fill=0):
        out = np.full(fov_shape, fill, dtype=volume.dtype)
        out[inner] = volume
        return out

    # 6. Echoes: fine complex signal, k-space truncation.
    clean = np.empty(acq_shape + (te.size,), dtype=np.complex64)
    fine_signal = np.zeros(fov_shape, dtype=np.complex64)
    for echo, t in enumerate(te):
        decay = weight * np.exp(-r2star * np.float32(t))
        angle = field_hz * np.float32(2.0 * np.pi * t)
        fine_signal.real[inner] = decay * np.cos(angle)
        fine_signal.imag[inner] = decay * np.sin(angle)
        del decay, angle
        clean[..., echo] = kspace_resample(fine_signal, acq_shape)
    del fine_signal, weight
    timings["echoes"] = _lap(start) - sum(timings.values())

    # 7. Ground truth on the acquisition grid.
    matrices = [overlap_matrix(nf, f, a)[0] for nf, f, a in zip(fov_shape, fine_mm, acq_mm)]
    mask_acq = area_average(to_fov(mask.astype(np.float32)), matrices) > 0.5
    chi_fov = to_fov(chi_brain)
    del chi_brain
    chi_kspace = kspace_resample(chi_fov, acq_shape) * mask_acq
    chi_average = area_average(chi_fov, matrices) * mask_acq
    del chi_fov
    chi_truth = chi_kspace if truth == "kspace" else chi_average
    # The local field exists outside the brain too: resampled unmasked, it has no artificial edge.
    local_fov = to_fov(local_ppm)
    del local_ppm
    local_acq = (kspace_resample(local_fov, acq_shape) if truth == "kspace"
                 else area_average(local_fov, matrices)) * mask_acq
    del local_fov
    # The total field jumps where the model's box ends; its volume average does not ring.
    total_acq = area_average(to_fov(field_hz), matrices)
    del field_hz
    separated = {}
    if parts is not None:
        for key in ("chi_pos_ppm", "chi_neg_ppm"):
            fov = to_fov(parts[key])
            separated[key] = (kspace_resample(fov, acq_shape) if truth == "kspace"
                              else area_average(fov, matrices)) * mask_acq
        for key in ("r2_hz", "r2prime_hz"):
            separated[key] = area_average(to_fov(parts[key]), matrices) * mask_acq
        del parts, fov
    r2star_acq = area_average(to_fov(r2star), matrices)
    r1_acq = area_average(to_fov(r1), matrices)
    labels_acq = majority_labels(to_fov(labels, fill=model.air_label), to_fov(mask), matrices, mask_acq,
                                 fill_label=model.air_label)
    del r1, r2star
    timings["truth"] = _lap(start) - sum(timings.values())

    # 8. Receive chain: phase offset, sensitivity, noise.
    head_acq = labels_acq != model.air_label
    offset = smooth_polynomial(acq_shape, head_acq, offset_rng, PHASE_OFFSET_PEAK_RAD, with_constant=True)
    clean *= np.exp(1j * offset.astype(np.complex64))[..., None]
    if n_coils == 0:
        gain = 1 + smooth_polynomial(acq_shape, head_acq, receive_rng, RECEIVE_BIAS_PEAK, with_constant=False)
    else:
        gain = coil_array_gain(acq_shape, acq_mm, head_acq, mask_acq, n_coils, receive_rng)
    noise_sd = 0.0
    if not noise_free:
        first = np.abs(clean[..., 0])[mask_acq] * gain[mask_acq]
        noise_sd = float(np.mean(first, dtype=np.float64)) / float(snr)
    magnitude = np.empty(acq_shape + (te.size,), dtype=np.float32)
    phase = np.empty(acq_shape + (te.size,), dtype=np.float32)
    for echo in range(te.size):
        magnitude[..., echo], phase[..., echo] = _receive(clean[..., echo], gain, max(n_coils, 1), noise_sd,
                                                          noise_rng)
    timings["receive"] = _lap(start) - sum(timings.values())
    timings["total"] = _lap(start)

    return RealisticGRE(
        magnitude=magnitude, phase=phase, te_s=te, b0_t=b0_t, affine=affine, voxel_size_mm=acq_mm,
        b0_dir=tuple(b0_dir), chi_ppm=chi_truth, local_field_ppm=local_acq, total_field_hz=total_acq,
        brain_mask=mask_acq, labels=labels_acq, r2star_hz=r2star_acq, phase_offset_rad=offset,
        noise_sd=noise_sd, chi_kspace_ppm=chi_kspace, chi_average_ppm=chi_average, truth=truth,
        r1_hz=r1_acq, fine_voxel_size_mm=tuple(fine_mm), wm_anisotropy=bool(wm_anisotropy),
        n_coils=n_coils, timings_s=timings, **separated)


def _lap(start):
    return time.perf_counter() - start


def _noise_free(snr):
    if snr is None:
        return True
    try:
        value = float(snr)
    except (TypeError, ValueError):
        raise QSMInputError(f"snr: {snr!r} is not a number; give a positive SNR, or None for noiseless data") from None
    if np.isnan(value) or value <= 0:
        raise QSMInputError(f"snr: {snr} must be positive; give for example 100, or None for noiseless data")
    return bool(np.isinf(value))


def _acquisition_affine(fine_affine, before, fov_shape, acq_shape):
    """Affine of the acquisition grid: same field-of-view box as the (padded) fine grid."""
    fine_affine = np.asarray(fine_affine, dtype=np.float64)
    shift = np.eye(4)
    shift[:3, 3] = -np.asarray(before, dtype=np.float64)
    voxel_map = np.eye(4)
    for axis, (nf, na) in enumerate(zip(fov_shape, acq_shape)):
        ratio = nf / na
        voxel_map[axis, axis] = ratio
        voxel_map[axis, 3] = 0.5 * (ratio - 1.0)
    return fine_affine @ shift @ voxel_map


def imperfect_shim(field_ppm, mask, voxel_size_mm, rng, *, relative_error=SHIM_ERROR, f0_error_ppm=0.0,
                   stride=SHIM_FIT_STRIDE):
    """The shim field a scanner applies: order 0-2 harmonic fit over ``mask``, with errors.

    The least-squares fit (on every ``stride``-th voxel per axis) of the nine
    harmonic polynomials of order <= 2 is returned with each coefficient
    multiplied by ``1 + relative_error * N(0, 1)``, plus a constant offset of
    SD ``f0_error_ppm``. Subtract it from the field to shim.

    Returns
    -------
    ndarray of float32, shape of ``field_ppm``
    """
    sub = (slice(None, None, stride),) * 3
    sub_mask = mask[sub]
    index = np.nonzero(sub_mask)
    if index[0].size < 9:
        raise QSMInputError("shim: the brain mask is too small to fit a second-order shim")
    centre = [float(np.mean(i)) * stride for i in index]
    scale = 0.5 * max(float(np.ptp(i)) * stride * v for i, v in zip(index, voxel_size_mm)) or 1.0
    sub_values = field_ppm[sub][index].astype(np.float64)
    sub_terms = list(harmonic_terms(sub_mask.shape, [v * stride for v in voxel_size_mm],
                                    [c / stride for c in centre], scale))
    design = np.stack([np.broadcast_to(t, sub_mask.shape)[index] for t in sub_terms], axis=1).astype(np.float64)
    coef = np.linalg.lstsq(design, sub_values, rcond=None)[0]
    coef *= 1.0 + relative_error * rng.standard_normal(coef.size)
    coef[0] += f0_error_ppm * rng.standard_normal()
    fit = np.zeros(field_ppm.shape, dtype=np.float32)
    for c, term in zip(coef, harmonic_terms(field_ppm.shape, voxel_size_mm, centre, scale)):
        fit += np.float32(c) * term
    return fit


def smooth_polynomial(shape, region, rng, peak, *, with_constant):
    """Random polynomial of order <= 2 in normalised coordinates, scaled so max |value| in region = peak."""
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
               for axis, n in enumerate(shape))
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    if with_constant:
        terms.insert(0, np.ones((1, 1, 1), dtype=np.float32))
    values = np.zeros(shape, dtype=np.float32)
    for c, term in zip(rng.standard_normal(len(terms)), terms):
        values += np.float32(c) * term
    inside = values[region] if region.any() else values
    extreme = float(np.max(np.abs(inside))) or 1.0
    return values * np.float32(peak / extreme)


def coil_array_gain(shape, voxel_size_mm, head, brain, n_coils, rng, *, radius_mm=COIL_RADIUS_MM):
    """Root sum of squares of the sensitivities of ``n_coils`` loop coils on a ring around the head.

    The coils sit evenly (with a random jitter) on a circle in the axial plane
    through the head's centre, 20 mm outside the head. Each sensitivity's
    magnitude follows the on-axis law of a circular loop of radius ``a``,
    ``(1 + (d / a)^2)^(-3/2)`` with ``d`` the distance to the coil. Normalised
    so that it averages 1 in the brain. Coil phases do not enter: the
    channels are combined with their true sensitivities (see :func:`_receive`).
    """
    coords = [(np.arange(n, dtype=np.float32) * np.float32(v)).reshape([-1 if a == axis else 1 for a in range(3)])
              for axis, (n, v) in enumerate(zip(shape, voxel_size_mm))]
    index = np.nonzero(head)
    centre = [float(np.mean(i)) * v for i, v in zip(index, voxel_size_mm)]
    extent = max((float(np.ptp(index[a])) * voxel_size_mm[a]) for a in range(2))
    ring = 0.5 * extent + 20.0
    sum_squares = np.zeros(shape, dtype=np.float32)
    for c in range(n_coils):
        angle = 2 * np.pi * c / n_coils + 0.3 * rng.standard_normal()
        position = [centre[0] + ring * np.cos(angle), centre[1] + ring * np.sin(angle), centre[2]]
        d2 = sum((coords[a] - np.float32(position[a])) ** 2 for a in range(3))
        sum_squares += (1 + d2 / np.float32(radius_mm ** 2)) ** np.float32(-3.0)
    gain = np.sqrt(sum_squares)
    return gain / np.float32(np.mean(gain[brain]) if brain.any() else np.mean(gain))


def _receive(signal, gain, n_channels, noise_sd, rng):
    """Magnitude and wrapped phase of one echo after the receive chain.

    One channel: ``gain`` is a smooth real receive bias; the data are the
    signal times the bias plus complex Gaussian noise (SD ``noise_sd`` per real
    and imaginary part).

    ``n_channels`` coils with sensitivities C_c (``gain`` = |C| = root sum of
    squares), each with independent noise n_c: the phase is that of the
    optimal combination ``sum conj(C_c) (C_c S + n_c)`` (Roemer et al. 1990) and
    the magnitude is the root sum of squares of the channels. Both are drawn
    exactly without forming the channels: with u = C/|C|, the combination is
    ``|C| (|C| S + u^H n)`` and the sum of squares ``||C| S + u^H n|^2 + |n_perp|^2``,
    where u^H n is one complex Gaussian of the same SD and ``|n_perp|^2`` is
    ``noise_sd^2`` times a chi-squared variable with 2 (N - 1) degrees of freedom.
    """
    data = signal * gain
    if noise_sd > 0:
        data += _complex_noise(signal.shape, noise_sd, rng)
    phase = wrap_to_pi(np.angle(data), np.float32)
    if n_channels == 1:
        return np.abs(data).astype(np.float32), phase
    power = data.real ** 2 + data.imag ** 2
    if noise_sd > 0:
        power += (rng.gamma(n_channels - 1, 2.0, size=signal.shape) * noise_sd ** 2).astype(np.float32)
    return np.sqrt(power), phase


def _complex_noise(shape, sd, rng):
    noise = np.empty(shape, dtype=np.complex64)
    noise.real = rng.standard_normal(shape, dtype=np.float32) * np.float32(sd)
    noise.imag = rng.standard_normal(shape, dtype=np.float32) * np.float32(sd)
    return noise


def majority_labels(labels, mask, matrices, mask_out, *, fill_label):
    """Majority vote of ``labels`` on the acquisition grid given by the overlap ``matrices``.

    The occupancy of each label (volume fraction of each acquisition voxel)
    is the overlap average of its indicator, computed on the label's bounding
    box only; the surrounding medium ``fill_label`` takes what the others
    leave. Inside ``mask_out`` only labels found inside the fine ``mask``
    compete, so the brain mask never holds a non-brain label.
    """
    shape_out = tuple(m.shape[0] for m in matrices)
    in_mask = set(np.unique(labels[mask]).tolist())
    best_any = np.full(shape_out, -1.0, dtype=np.float32)
    best_brain = np.full(shape_out, -1.0, dtype=np.float32)
    label_any = np.full(shape_out, fill_label, dtype=np.uint8)
    label_brain = np.full(shape_out, fill_label, dtype=np.uint8)
    covered = np.zeros(shape_out, dtype=np.float32)
    boxes = ndi.find_objects(labels)
    for index, box in enumerate(boxes):
        label = index + 1
        if box is None or label == fill_label:
            continue
        occupancy, box_out = _boxed_occupancy(labels, label, box, matrices)
        covered[box_out] += occupancy
        for best, chosen, allowed in ((best_any, label_any, True), (best_brain, label_brain, label in in_mask)):
            if not allowed:
                continue
            current = best[box_out]
            better = occupancy > current
            current[better] = occupancy[better]
            best[box_out] = current
            view = chosen[box_out]
            view[better] = label
            chosen[box_out] = view
    fill = 1.0 - covered
    better = fill > best_any
    label_any[better] = fill_label
    return np.where(mask_out, label_brain, label_any).astype(np.uint8)


def _boxed_occupancy(labels, label, box, matrices):
    """Overlap average of (labels == label) on the output voxels touching its bounding box ``box``."""
    box_in, box_out, parts = [], [], []
    for axis, weights in enumerate(matrices):
        lo, hi = box[axis].start, box[axis].stop
        columns = weights[:, lo:hi]
        rows = np.unique(columns.nonzero()[0])
        r_lo, r_hi = int(rows.min()), int(rows.max()) + 1
        sub = weights[r_lo:r_hi]
        used = np.unique(sub.nonzero()[1])
        c_lo, c_hi = int(used.min()), int(used.max()) + 1
        box_in.append(slice(c_lo, c_hi))
        box_out.append(slice(r_lo, r_hi))
        parts.append(sub[:, c_lo:c_hi])
    occupancy = area_average(labels[tuple(box_in)] == label, parts)
    return occupancy, tuple(box_out)
