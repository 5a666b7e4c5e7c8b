"""From a fine simulation grid to an acquisition grid, the way a scanner samples k-space.

A scanner measures the object's Fourier transform inside a box of k-space
(the matrix) and reconstructs by an inverse FFT. An image computed on a finer
grid is brought to the acquisition grid the same way: per axis, its DFT is
truncated to the acquired frequencies (or zero-filled where the acquisition is
finer than the simulation grid) and transformed back. Partial volume, Gibbs
ringing at sharp edges and, for the complex signal, intra-voxel dephasing
follow from this without any further modelling.

Both grids share the field of view: a box of ``n_fine * fine_mm`` =
``n_acq * acq_mm`` with the same centre, voxel centres at (i + 1/2) voxels from
its edge. The truncation is symmetric: where the kept band ends on a Nyquist
frequency, the two frequencies +N/2 and -N/2 each count half, so real images
stay real.
"""

import numpy as np
import scipy.fft as sfft

from ..fourier import fft_workers

#: Largest relative mismatch tolerated between the two fields of view.
FOV_TOLERANCE = 1e-6


def acquisition_grid(n_fine, fine_mm, acq_mm, *, max_extra=None):
    """Fine field of view and acquisition matrix along one axis.

    The field of view is enlarged (by padding the fine grid with the
    surrounding medium) to the smallest ``n >= n_fine`` whose length is a
    whole number of acquisition voxels. If none exists within ``max_extra``
    voxels (default ``n_fine // 2``), the fine grid is kept and the
    acquisition voxel becomes ``n_fine * fine_mm / round(n_fine * fine_mm / acq_mm)``.

    Returns
    -------
    n_fov : int
        Fine voxels across the field of view.
    n_acq : int
        Acquisition matrix.
    acq_mm : float
        Acquisition voxel size actually used (mm).
    """
    n_fine = int(n_fine)
    fine_mm, acq_mm = float(fine_mm), float(acq_mm)
    if max_extra is None:
        max_extra = n_fine // 2
    for n in range(n_fine, n_fine + int(max_extra) + 1):
        ratio = n * fine_mm / acq_mm
        if abs(ratio - round(ratio)) <= FOV_TOLERANCE * ratio and round(ratio) >= 1:
            return n, int(round(ratio)), acq_mm
    n_acq = max(1, int(round(n_fine * fine_mm / acq_mm)))
    return n_fine, n_acq, n_fine * fine_mm / n_acq


def kspace_resample(volume, shape_out, *, axes_order=None):
    """Resample a volume onto a grid of the same field of view by k-space truncation or zero filling.

    Parameters
    ----------
    volume : ndarray, real or complex, 3D
        Image on the fine grid.
    shape_out : tuple of 3 int
        Acquisition matrix. Axes with fewer samples are truncated in k-space;
        axes with more are zero-filled (band-limited interpolation: nothing
        finer than the input grid is invented).
    axes_order : sequence of int, optional
        Order in which the axes are processed; default: the most reduced first.

    Returns
    -------
    ndarray
        complex64 for complex input, float32 for real input (the imaginary
        part, zero up to rounding by the symmetric truncation, is dropped).
        A constant image keeps its value.
    """
    volume = np.asarray(volume)
    shape_out = tuple(int(n) for n in shape_out)
    if volume.ndim != len(shape_out):
        raise ValueError(f"shape_out {shape_out} does not match a {volume.ndim}D volume")
    real = not np.iscomplexobj(volume)
    out = volume.astype(np.complex64, copy=False)
    if axes_order is None:
        axes_order = sorted(range(volume.ndim), key=lambda a: shape_out[a] / volume.shape[a])
    for axis in axes_order:
        out = _resample_axis(out, axis, shape_out[axis])
    if real:
        return np.ascontiguousarray(out.real, dtype=np.float32)
    return np.ascontiguousarray(out, dtype=np.complex64)


def _resample_axis(data, axis, n_out):
    n_in = data.shape[axis]
    if n_in == n_out:
        return data
    spectrum = sfft.fft(data, axis=axis, workers=fft_workers())
    n_min = min(n_in, n_out)
    half = n_min // 2
    # Odd n_min: the symmetric band -half..half. Even: -half..half too, the two ends at half weight.
    freqs = np.arange(-half, half + 1)
    weights = np.ones(freqs.size)
    if n_min % 2 == 0:
        weights[0] = weights[-1] = 0.5
    # Sample positions: acquisition voxel m sits at fine index m r + (r - 1) / 2, r = n_in / n_out,
    # so both grids fill the same box; the shift is a phase ramp in k-space.
    shift = 0.5 * (n_in / n_out - 1.0)
    factor = weights * np.exp(2j * np.pi * freqs * shift / n_in) * (n_out / n_in)
    picked = np.take(spectrum, freqs % n_in, axis=axis)
    del spectrum
    view = [1] * data.ndim
    view[axis] = freqs.size
    picked *= factor.astype(np.complex64).reshape(view)
    destination = freqs % n_out
    if n_min % 2 == 0 and n_out < n_in:
        # +N/2 and -N/2 land on the same acquisition frequency: add them.
        last = [slice(None)] * data.ndim
        first = [slice(None)] * data.ndim
        last[axis], first[axis] = slice(-1, None), slice(0, 1)
        picked[tuple(first)] += picked[tuple(last)]
        keep = [slice(None)] * data.ndim
        keep[axis] = slice(0, -1)
        picked = picked[tuple(keep)]
        destination = destination[:-1]
    shape = list(data.shape)
    shape[axis] = n_out
    full = np.zeros(shape, dtype=np.complex64)
    index = [slice(None)] * data.ndim
    index[axis] = destination
    full[tuple(index)] = picked
    del picked
    return sfft.ifft(full, axis=axis, workers=fft_workers(), overwrite_x=True)
