"""Ground truth and data for susceptibility source separation (chi-separation) on the head model.

The head model's tissue table (NeuroPoly susceptibility-separation phantom,
MIT licence; ``qsmlib/data/head_phantom_064mm_tissues.csv``) splits each
tissue's susceptibility into a paramagnetic part ``chi_pos >= 0`` and a
diamagnetic part ``chi_neg <= 0`` and gives the published texture weights of
each part against the voxel's deviation of R2* and R1 from the tissue mean::

    chi_pos(r) = mean chi_pos + a_pos dR2*(r) + b_pos dR1(r)   (same for chi_neg)

The relaxation deviations are the realistic simulator's textures
(:func:`qsmlib.simulation.texture.relaxation_textures`). Each part is then
clipped to its sign. Relaxation follows the chi-separation model (Shin et al.
2021): R2 per tissue from the literature (``head_phantom_r2.csv``, with a 3 %
texture), ``R2' = Dr_pos chi_pos - Dr_neg chi_neg`` and ``R2* = R2 + R2'`` in
the brain; outside the brain R2* is the tissue table's.

:func:`simulate_separation_gre` turns these maps into a multi-echo
gradient-echo acquisition exactly as :func:`qsmlib.simulation.simulate_gre`
does (discrete dipole kernel on the acquisition grid, whole head relative to
air, second-order shim, receive phase offset and bias, complex noise), so the
pipeline's stages run on it unchanged; the truth maps come with it.

References
----------
Shin HG, Lee J, Yun YH, et al. chi-separation: Magnetic susceptibility source
separation toward iron and myelin mapping in the brain. NeuroImage
2021;240:118371.

Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0: A
realistic in silico head phantom for MRI data simulation and evaluation of
susceptibility mapping procedures. Magn Reson Med 2021;86:526-542.
"""

import csv
import io
from dataclasses import dataclass
from importlib import resources
from typing import Optional

import numpy as np

from ..dipole import dipole_convolve
from ..errors import QSMInputError
from ..separation import relaxometric_constant
from ..validation import check_b0, check_echo_times, check_number
from .fine_phantom import FineHeadModel, shipped_tissues
from .forward import (R2STAR_REFERENCE_B0_T, SimulatedGRE, acquisition_geometry, gre_echoes, receive_chain,
                      total_field_hz)
from .texture import relaxation_textures, smooth_random_field

R2_FILE = "head_phantom_r2.csv"
#: Coefficient of variation of the R2 texture inside a tissue.
R2_CV = 0.03
#: Correlation length (Gaussian SD, mm) of the R2 texture.
R2_TEXTURE_MM = 2.0


@dataclass
class SeparationGRE(SimulatedGRE):
    """A simulated acquisition with the truth of susceptibility source separation.

    Adds to :class:`SimulatedGRE` (``chi_ppm`` is ``chi_pos_ppm + chi_neg_ppm`` in the brain):

    Attributes
    ----------
    chi_pos_ppm, chi_neg_ppm : ndarray of float32
        Paramagnetic (>= 0) and diamagnetic (<= 0) susceptibility (ppm) in the brain, 0 outside.
    r2_hz, r2prime_hz : ndarray of float32
        R2 and R2' = R2* - R2 (1/s) in the brain, 0 outside.
    dr_pos, dr_neg : float
        The relaxometric constants (Hz per ppm) of the simulation.
    """

    chi_pos_ppm: Optional[np.ndarray] = None
    chi_neg_ppm: Optional[np.ndarray] = None
    r2_hz: Optional[np.ndarray] = None
    r2prime_hz: Optional[np.ndarray] = None
    dr_pos: float = 0.0
    dr_neg: float = 0.0


def shipped_r2_table():
    """R2 at 3 T (1/s) per label, from ``qsmlib/data/head_phantom_r2.csv`` (float64, indexed by label)."""
    text = (resources.files("qsmlib") / "data" / R2_FILE).read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    table = np.zeros(256, dtype=np.float64)
    for row in csv.DictReader(io.StringIO("\n".join(rows))):
        table[int(row["label"])] = float(row["r2_3t_hz"])
    return table


def separation_maps(phantom, *, b0_t=3.0, texture=True, dr_pos=None, dr_neg=None, seed=0):
    """Truth maps of chi-separation on ``phantom``'s grid.

    Parameters
    ----------
    phantom : HeadPhantom
        Labels as the shipped head model (the fine tissue table is looked up by label).
    b0_t : float, optional
        Field strength (T) for the relaxometric constants; R2 is the 3 T table at every field.
    texture : bool, optional
        Relaxation textures and the susceptibility that follows them; False: tissue means.
    dr_pos, dr_neg : float, optional
        Relaxometric constants (Hz/ppm); default :func:`qsmlib.separation.relaxometric_constant`.
    seed : int, optional

    Returns
    -------
    dict
        ``chi_pos_ppm``, ``chi_neg_ppm``, ``r2_hz``, ``r2prime_hz``, ``r2star_hz`` (float32, brain
        only, 0 outside), and the scalars ``dr_pos``, ``dr_neg``.
    """
    labels = np.asarray(phantom.labels)
    mask = np.asarray(phantom.brain_mask, dtype=bool)
    tissues = shipped_tissues()
    missing = sorted(set(np.unique(labels).tolist()) - set(tissues))
    if missing:
        raise QSMInputError(f"phantom: labels {missing} are not in the head model's tissue table")
    air = next(label for label, t in tissues.items() if t.name.lower() == "air")
    model = FineHeadModel(labels=labels, brain_mask=mask, affine=phantom.affine,
                          voxel_size_mm=tuple(phantom.voxel_size_mm), tissues=tissues, air_label=air)
    rng_texture, rng_r2 = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if texture:
        r2star_dev, r1_dev, _ = relaxation_textures(model, rng_texture)
    else:
        r2star_dev = r1_dev = None
    return separation_parts(model, r2star_dev, r1_dev, b0_t=b0_t, dr_pos=dr_pos, dr_neg=dr_neg, rng=rng_r2)


def separation_parts(model, r2star_dev_hz, r1_dev_hz, *, b0_t, dr_pos=None, dr_neg=None, rng=None):
    """The two parts, R2, R2' and R2* in the brain of ``model`` from its relaxation textures.

    Parameters
    ----------
    model : FineHeadModel
        Labels, brain mask, voxel size and the tissue table (``chi_pos_ppm``,
        ``chi_neg_ppm`` and the texture weights per label).
    r2star_dev_hz, r1_dev_hz : ndarray or None
        Deviations of R2* and R1 from the tissue means at 3 T (1/s); None: no texture.
    b0_t : float
        Field strength (T) of the relaxometric constants.
    dr_pos, dr_neg : float, optional
        Relaxometric constants (Hz/ppm).
    rng : numpy Generator, optional
        Draws the R2 texture (none when ``None`` or without relaxation textures).

    Returns
    -------
    dict
        As :func:`separation_maps`.

    Notes
    -----
    The published table leaves calcification unsplit (0 and 0 for a total of
    -3.3 ppm); here it is wholly diamagnetic, as calcium is. Every brain tissue's
    parts then add up to the table's total (before texture).
    """
    b0_t = check_b0(b0_t, name="b0_t")
    dr = relaxometric_constant(b0_t)
    dr_pos = dr if dr_pos is None else check_number(dr_pos, "dr_pos", strict=True)
    dr_neg = dr if dr_neg is None else check_number(dr_neg, "dr_neg", strict=True)
    labels = np.asarray(model.labels)
    mask = np.asarray(model.brain_mask, dtype=bool)
    # Where the published split does not add up to the tissue's susceptibility (calcification:
    # -3.3 ppm, split 0 and 0), the rest goes to the part of its sign: calcium is diamagnetic.
    means = {"pos": model.lookup("chi_pos_ppm"), "neg": model.lookup("chi_neg_ppm")}
    rest = model.lookup("chi_ppm") - means["pos"] - means["neg"]
    means["pos"] = means["pos"] + np.maximum(rest, 0)
    means["neg"] = means["neg"] + np.minimum(rest, 0)
    parts = {}
    for sign in ("pos", "neg"):
        values = means[sign].astype(np.float32)[labels]
        if r2star_dev_hz is not None:
            values += model.lookup(f"r2star_weight_{sign}").astype(np.float32)[labels] * r2star_dev_hz
            values += model.lookup(f"r1_weight_{sign}").astype(np.float32)[labels] * r1_dev_hz
        values = np.maximum(values, 0) if sign == "pos" else np.minimum(values, 0)
        parts[sign] = np.where(mask, values, np.float32(0)).astype(np.float32)
    r2 = shipped_r2_table().astype(np.float32)[labels]
    if r2star_dev_hz is not None and rng is not None:
        r2 *= 1 + np.float32(R2_CV) * smooth_random_field(labels.shape, model.voxel_size_mm, R2_TEXTURE_MM, rng)
    r2 = np.where(mask, r2, np.float32(0)).astype(np.float32)
    r2prime = (np.float32(dr_pos) * parts["pos"] - np.float32(dr_neg) * parts["neg"]).astype(np.float32)
    return {"chi_pos_ppm": parts["pos"], "chi_neg_ppm": parts["neg"], "r2_hz": r2, "r2prime_hz": r2prime,
            "r2star_hz": np.where(mask, r2 + r2prime, np.float32(0)).astype(np.float32),
            "dr_pos": float(dr_pos), "dr_neg": float(dr_neg)}


def simulate_separation_gre(phantom=None, *, b0_t=3.0, te_s=(0.004, 0.010, 0.016, 0.022, 0.028), snr=100.0,
                            b0_dir=None, texture=True, shim=True, dr_pos=None, dr_neg=None, seed=0):
    """Multi-echo gradient-echo data of the head with chi-separation truth.

    Signal, per voxel and echo time TE (as :func:`qsmlib.simulation.simulate_gre`)::

        S(TE) = M0 B exp(-R2* TE) exp(i (phi0 + 2 pi f TE)) + noise

    with the susceptibility ``chi_pos + chi_neg`` and ``R2* = R2 + R2'`` in the
    brain (see the module docstring), the tissue table's values elsewhere.

    Parameters
    ----------
    phantom : HeadPhantom, optional
        Default: the shipped 1 mm head phantom.
    b0_t, te_s, snr, b0_dir, shim, seed
        As :func:`qsmlib.simulation.simulate_gre`.
    texture : bool, optional
        Texture of the two parts and of R2 (see :func:`separation_maps`).
    dr_pos, dr_neg : float, optional
        Relaxometric constants (Hz/ppm) of the simulation.

    Returns
    -------
    SeparationGRE

    Raises
    ------
    QSMInputError
        If an argument is not valid.

    References
    ----------
    Shin HG, Lee J, Yun YH, et al. chi-separation: Magnetic susceptibility source
    separation toward iron and myelin mapping in the brain. NeuroImage
    2021;240:118371.
    """
    te = check_echo_times(te_s, name="te_s")
    b0_t = check_b0(b0_t, name="b0_t")
    noise_free = snr is None or (np.isscalar(snr) and np.isinf(float(snr)))
    if not noise_free:
        snr = check_number(snr, "snr", strict=True)
    phantom, voxel_size, b0_dir, affine = acquisition_geometry(phantom, b0_dir)
    streams = np.random.SeedSequence(seed).spawn(4)
    truth_seed = int(streams[0].generate_state(1)[0])
    offset_rng, bias_rng, noise_rng = (np.random.default_rng(s) for s in streams[1:])
    truth = separation_maps(phantom, b0_t=b0_t, texture=texture, dr_pos=dr_pos, dr_neg=dr_neg, seed=truth_seed)
    labels = np.asarray(phantom.labels)
    mask = np.asarray(phantom.brain_mask, dtype=bool)
    air = phantom.label_of("air")
    head = labels != air

    chi_brain = truth["chi_pos_ppm"] + truth["chi_neg_ppm"]
    brain_field = dipole_convolve(chi_brain, voxel_size, b0_dir)
    local_ppm = np.where(mask, brain_field, np.float32(0))
    chi_table = phantom.lookup("chi_ppm").astype(np.float32)[labels]
    exterior = np.where(head & ~mask, chi_table - np.float32(phantom.tissues[air].chi_ppm), np.float32(0))
    exterior[mask] = -np.float32(phantom.tissues[air].chi_ppm)  # the brain relative to air, beyond its own chi
    del chi_table
    field_hz = total_field_hz(brain_field, exterior, mask, voxel_size, b0_dir, b0_t, shim=shim)
    del exterior, brain_field

    r2star = (phantom.lookup("r2star_3t_hz") * (b0_t / R2STAR_REFERENCE_B0_T)).astype(np.float32)[labels]
    r2star[mask] = truth["r2star_hz"][mask]
    offset, weight = receive_chain(phantom, head, offset_rng, bias_rng)
    magnitude, phase, noise_sd = gre_echoes(weight, r2star, offset, field_hz, te, mask,
                                            None if noise_free else snr, noise_rng)

    return SeparationGRE(
        magnitude=magnitude, phase=phase, te_s=te, b0_t=b0_t, affine=affine, voxel_size_mm=voxel_size,
        b0_dir=tuple(b0_dir), chi_ppm=chi_brain, local_field_ppm=local_ppm, total_field_hz=field_hz,
        brain_mask=mask.copy(), labels=labels.copy(), r2star_hz=r2star, phase_offset_rad=offset, noise_sd=noise_sd,
        chi_pos_ppm=truth["chi_pos_ppm"], chi_neg_ppm=truth["chi_neg_ppm"], r2_hz=truth["r2_hz"],
        r2prime_hz=truth["r2prime_hz"], dr_pos=truth["dr_pos"], dr_neg=truth["dr_neg"])
