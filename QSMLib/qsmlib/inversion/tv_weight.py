"""The TV weight from the data: the field's noise, measured, and a rule that maps it to ``lam``.

Two pieces:

- :func:`field_noise_sd` measures the noise SD of a field map alone (no echo
  fit at hand: ``qsm invert``, ``--local-field``). It follows Donoho &
  Johnstone (1994): the median absolute deviation of the finest-scale
  high-pass coefficients, divided by 0.6745, is a robust estimate of white
  noise's SD, because smooth signal leaves those coefficients near zero and
  the few large ones at edges do not move a median. The high-pass here is the
  separable second difference ``[1, -2, 1]`` along all three axes (27 taps,
  gain ``sqrt(216)`` on white noise), which is blind to any field that is
  linear along each axis within a 3x3x3 neighbourhood. Only voxels whose
  whole neighbourhood lies in the mask count. On a real or realistic field it
  also measures fine structure that no smooth model explains (texture, vessels,
  background-removal residue), which is what the TV term has to hold back too.
- :func:`tv_weight_from_noise` maps a noise SD to a TV weight:
  ``lam = gain * (h / 1 mm)**voxel_exponent * 1 mm * sigma`` (ppm mm), with
  ``h`` the mean voxel edge (mm). An L1 penalty under a squared misfit acts by
  soft thresholding, and the threshold that removes noise of SD ``sigma``
  grows linearly with ``sigma`` (the universal threshold ``sigma sqrt(2 log
  n)`` of Donoho & Johnstone 1994); with exponent 1, ``h`` turns the per-voxel
  threshold into the weight of a gradient in ppm/mm. Each inversion's rule
  (:data:`TV_WEIGHT_RULES`: the noise estimate, gain and exponent) was
  calibrated on the realistic simulator.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..validation import as_mask, as_voxel_size, as_volume, check_number

#: 1 / 0.6745: MAD of a standard normal to its SD (Donoho & Johnstone 1994).
MAD_TO_SD = 1.0 / 0.6744897501960817
#: The noise source recorded when the multi-echo fit's noise is used (pipeline and workflow).
ECHO_FIT_NOISE_SOURCE = "multi-echo fit (median field SD in the mask)"


@dataclass(frozen=True)
class TVWeightRule:
    """How one inversion's TV weight follows the noise: ``lam = gain * (h / 1 mm)**voxel_exponent * 1 mm * sigma``.

    ``noise`` names the SD ``sigma``: ``"echo fit"`` takes the multi-echo
    fit's field SD where there is one (else the field's own, as ``"field"``);
    ``"field"`` always measures it on the local field (:func:`field_noise_sd`),
    so that ``qsm run`` and ``qsm invert`` of its local field choose alike.
    """

    gain: float
    noise: str = "echo fit"
    voxel_exponent: float = 1.0


#: The rule of every TV-weighted inversion without one of its own in :data:`TV_WEIGHT_RULES`. Calibrated
#: for TV-ADMM on the realistic simulator (tuning seed 1; 1 and 2 mm, SNR 50/100/300) by the worst case.
TV_WEIGHT_RULE = TVWeightRule(gain=0.3)

#: Rules calibrated for one inversion. Nonlinear TV (``Testing/benchmarks/tv_weight_sweep.py``, the
#: robustness table's ten acquisitions, gains 0.1-0.6 on the echo fit's noise): on the tuning seed (101)
#: the best weight did not follow the echo fit's noise (its best gain on it ran from 0.1 in the hard
#: 2 mm row to 0.45 at 0.64 mm and SNR 300), but the field's high-pass MAD, which also measures the
#: fine structure the TV term must hold back, with no voxel-size factor, fitted every row: the worst
#: row's NRMSE above that row's best weight is 1.3 points (4.2 with the echo-fit gain 0.2, at
#: 0.64 mm), and 1.1 (2.7) on the reported seed 202, unchanged constants.
TV_WEIGHT_RULES = {"nltv": TVWeightRule(gain=0.2, noise="field", voxel_exponent=0.0)}


def tv_weight_rule(method):
    """The TV weight rule of the inversion ``method``."""
    return TV_WEIGHT_RULES.get(method, TV_WEIGHT_RULE)


def field_noise_sd(field, mask):
    """Robust noise SD of a field map from its high-pass residual (MAD; Donoho & Johnstone 1994).

    Parameters
    ----------
    field : ndarray, shape (X, Y, Z)
        Field map in any unit (the result is in the same unit).
    mask : ndarray, shape (X, Y, Z)
        Voxels where the field is valid. Only voxels whose 3x3x3
        neighbourhood lies wholly inside count.

    Returns
    -------
    float
        ``median(|h - median(h)|) / 0.6745 / sqrt(216)`` over those voxels,
        with ``h`` the field filtered by ``[1, -2, 1]`` along every axis.

    Raises
    ------
    QSMInputError
        On a non-3D or non-finite field, a mismatched mask, or fewer than 100
        usable voxels.

    References
    ----------
    .. [1] Donoho DL, Johnstone IM. Ideal spatial adaptation by wavelet
       shrinkage. Biometrika 1994;81:425-455.
    """
    field = as_volume(field, "field").astype(np.float64)
    mask = as_mask(mask, field.shape)
    core = ndimage.binary_erosion(mask, structure=np.ones((3, 3, 3), bool), border_value=0)
    if core.sum() < 100:
        raise QSMInputError("field noise: fewer than 100 voxels lie 1 voxel inside the mask; "
                            "the mask is too small or too thin to measure the noise")
    high = np.where(mask, field, 0.0)
    for axis in range(3):
        high = ndimage.correlate1d(high, [1.0, -2.0, 1.0], axis=axis, mode="constant")
    values = high[core]
    mad = float(np.median(np.abs(values - np.median(values))))
    return mad * MAD_TO_SD / np.sqrt(216.0)


def tv_weight_from_noise(noise_sd_ppm, voxel_size, gain=TV_WEIGHT_RULE.gain, voxel_exponent=1.0):
    """The TV weight (ppm mm) for a field with noise SD ``noise_sd_ppm``.

    ``lam = gain * (h / 1 mm)**voxel_exponent * 1 mm * sigma`` with ``h`` the
    mean voxel edge in mm: ``gain * h * sigma`` for the default exponent 1.

    Parameters
    ----------
    noise_sd_ppm : float
        Typical noise SD of the local field (ppm).
    voxel_size : sequence of 3 float
        Voxel size (mm).
    gain : float, optional
        Dimensionless gain; default TV-ADMM's (:func:`tv_weight_rule` gives
        each inversion's rule).
    voxel_exponent : float, optional
        Power of the voxel edge in the rule.

    Returns
    -------
    float

    Raises
    ------
    QSMInputError
        On a non-positive or non-finite noise SD or an invalid voxel size.

    References
    ----------
    .. [1] Donoho DL, Johnstone IM. Ideal spatial adaptation by wavelet
       shrinkage. Biometrika 1994;81:425-455.
    .. [2] Bilgic B, Fan AP, Polimeni JR, Cauley SF, Bianciardi M,
       Adalsteinsson E, Wald LL, Setsompop K. Fast quantitative susceptibility
       mapping with L1-regularization and automatic parameter selection.
       Magn Reson Med 2014;72:1444-1459.
    """
    sigma = check_number(noise_sd_ppm, "noise_sd_ppm", strict=True)
    gain = check_number(gain, "gain", strict=True)
    exponent = float(voxel_exponent)
    h = float(np.mean(as_voxel_size(voxel_size)))
    return float(gain * h ** exponent * sigma)


def choose_tv_weight(field_ppm, mask, voxel_size, *, noise_sd_ppm=None, noise_source=None, rule=TV_WEIGHT_RULE):
    """The TV weight of ``field_ppm`` and a provenance record of how it was chosen.

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local field (ppm).
    mask : ndarray, shape (X, Y, Z)
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm).
    noise_sd_ppm : float or ndarray, optional
        The field's noise SD (ppm), a number or a map (its median inside the
        mask is used), for example from the multi-echo fit. Default: measured
        from the field by :func:`field_noise_sd`. Which one an inversion's
        rule takes is the caller's choice (``rule.noise``).
    noise_source : str, optional
        Where ``noise_sd_ppm`` came from, for the record.
    rule : TVWeightRule, optional
        The inversion's rule (:func:`tv_weight_rule`); its gain and voxel
        exponent are used here.

    Returns
    -------
    lam : float
        TV weight (ppm mm).
    record : dict
        JSON-ready: ``rule``, ``parameter``, ``value``, ``noise_sd_ppm``,
        ``noise_source``, ``voxel_size_mm``, ``gain_per_ppm`` (the rule's
        dimensionless gain, under the name earlier records used) and
        ``voxel_exponent``.
    """
    mask = as_mask(mask, np.shape(field_ppm))
    if noise_sd_ppm is None:
        sigma = field_noise_sd(field_ppm, mask)
        noise_source = "field high-pass MAD (Donoho & Johnstone 1994)"
    else:
        values = np.asarray(noise_sd_ppm, dtype=np.float64)
        sigma = float(np.median(values[mask])) if values.ndim == 3 else float(values)
        noise_source = noise_source or "given"
    lam = tv_weight_from_noise(sigma, voxel_size, rule.gain, rule.voxel_exponent)
    record = {"rule": "lam = gain * (mean voxel edge / 1 mm)^voxel_exponent * 1 mm * noise_sd (ppm): soft-threshold "
                      "scaling (Donoho & Johnstone 1994), gain and exponent calibrated on the realistic simulator",
              "parameter": "lam", "value": lam, "noise_sd_ppm": sigma, "noise_source": noise_source,
              "voxel_size_mm": [float(v) for v in as_voxel_size(voxel_size)], "gain_per_ppm": rule.gain,
              "voxel_exponent": rule.voxel_exponent}
    return lam, record
