"""Laplacian (least-squares) phase unwrapping with fast cosine transforms.

The Laplacian of the true phase can be computed from the wrapped phase
alone. Schofield & Zhu (Opt Lett 2003) write it as

    Lap(phi) = cos(p) Lap(sin p) - sin(p) Lap(cos p),

which, on the 7-point stencil, is the sum over the six neighbours of
``sin(p_neighbour - p_voxel)``. Replacing that sine by the phase difference
wrapped to [-pi, pi) gives the Laplacian of the unwrapped phase exactly
wherever neighbouring voxels differ by less than pi (the unweighted least
squares unwrapping of Ghiglia & Romero, J Opt Soc Am A 1994). Either
Laplacian is then inverted by a Poisson solve.

The Poisson solve uses the discrete cosine transform (DCT-II), i.e. Neumann
boundaries at the edges of the volume. This is the same as mirror-padding
the volume to twice its size along each axis and using the FFT with the
eigenvalues of :func:`qsmlib.fourier.laplacian_eigenvalues`, at an eighth of
the cost; no artificial wrap-around edge appears.

With wrapped differences, the source is exactly the Neumann (graph)
Laplacian of the true phase wherever no neighbour step exceeds pi, and the
solve inverts it exactly: the result is then the true phase up to a
constant. Where steps exceed pi (noise spikes, undersampled fields near
air cavities), the result is not congruent with the input: the error
spreads smoothly instead of forming 2 pi jumps. Background field removal
removes smooth (harmonic) errors far better than jumps, which is why the
method suits QSM; uses that need the exact phase should use
:func:`~qsmlib.unwrap.unwrap_reliability`.
"""

import numpy as np
import scipy.fft as sfft

from .. import fourier
from ..errors import QSMInputError
from ..validation import as_mask, as_volume, as_voxel_size
from .reliability import TWO_PI

#: Ways to estimate the phase difference between neighbours from the wrapped phase.
DIFFERENCES = ("wrapped", "sine")


def unwrap_laplacian(phase, mask=None, voxel_size=(1, 1, 1), *, differences="wrapped"):
    """Estimate the unwrapped phase by inverting its Laplacian (fast, not congruent).

    Parameters
    ----------
    phase : ndarray, shape (X, Y, Z)
        Phase in radians (wrapped or not).
    mask : ndarray of bool, shape (X, Y, Z), optional
        Region where the result is wanted: the result is 0 outside it, and
        its constant offset is chosen over it. The Laplacian is computed over
        the whole volume, so that voxels at the edge of the mask see their
        true neighbours; noise outside the mask only adds a field that is
        harmonic inside it. Default: the whole volume.
    voxel_size : sequence of 3 float, optional
        Voxel size in mm (the Laplacian's axis weights).
    differences : {"wrapped", "sine"}, optional
        Phase difference between neighbours: ``"wrapped"`` (default) wraps
        it to [-pi, pi), exact for any phase whose neighbours differ by less
        than pi; ``"sine"`` takes its sine, as in Schofield & Zhu's
        ``cos(p) Lap(sin p) - sin(p) Lap(cos p)``, which shrinks steep
        steps (by ``sin(d)/d``: 4 % at 0.5 rad per voxel, 16 % at 1 rad).
        On a simulated head (echo 5 of 5, 28 ms) the sine form gave 17
        times more voxels with a Laplacian error above 0.5 rad/mm^2.

    Returns
    -------
    ndarray, float32, shape (X, Y, Z)
        Unwrapped phase estimate in radians, 0 outside ``mask``. Its
        constant is chosen so that it agrees with the wrapped phase on
        average over the mask, then shifted by a multiple of 2 pi to put its
        median over the mask in [-pi, pi) (as :func:`unwrap_reliability`).

    Raises
    ------
    QSMInputError
        If ``phase`` is not a finite 3D volume, ``mask`` does not match it or
        is empty, the voxel size is invalid, or ``differences`` is unknown.

    Notes
    -----
    Cost: one DCT pair of the volume's size (about 0.3 s for 164 x 205 x 205
    on two cores). Without residues (no neighbour step above pi, noise
    included) the result is exact up to 2 pi k; with residues the error is
    smooth rather than made of 2 pi jumps.

    References
    ----------
    Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric
    applications. Opt Lett 2003;28:1194-1196.

    Ghiglia DC, Romero LA. Robust two-dimensional weighted and unweighted
    phase unwrapping that uses fast transforms and iterative methods.
    J Opt Soc Am A 1994;11:107-117.

    Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain
    reflects spatial variation in tissue composition. NeuroImage
    2011;55:1645-1656.
    """
    phase = as_volume(phase, "phase", dtype=np.float32)
    voxel_size = as_voxel_size(voxel_size)
    if differences not in DIFFERENCES:
        raise QSMInputError(f"differences: {differences!r} is not one of {DIFFERENCES}")
    mask = np.ones(phase.shape, dtype=bool) if mask is None else as_mask(mask, phase.shape)

    laplacian = wrapped_phase_laplacian(phase, voxel_size, differences=differences)
    estimate = solve_poisson_neumann(laplacian, voxel_size)
    del laplacian

    # Constant: the circular mean of (wrapped phase - estimate) over the mask.
    misfit = phase[mask].astype(np.float64) - estimate[mask]
    estimate += np.float32(np.angle(np.mean(np.exp(1j * misfit))))
    median = np.median(estimate[mask])
    estimate -= np.float32(TWO_PI * np.floor((median + np.pi) / TWO_PI))
    estimate[~mask] = 0
    return estimate


def wrapped_phase_laplacian(phase, voxel_size, *, differences="wrapped"):
    """Discrete Laplacian (1/mm^2, float32) of the unwrapped phase, from the wrapped phase.

    Sum over the face neighbours of the (wrapped or sine) phase difference,
    divided by the squared spacing; neighbours beyond the volume's edge are
    mirror images (zero difference, Neumann boundary).
    """
    result = np.zeros(phase.shape, dtype=np.float32)
    for axis, spacing in enumerate(voxel_size):
        step = np.diff(phase, axis=axis)
        if differences == "sine":
            np.sin(step, out=step)
        else:
            step -= np.float32(TWO_PI) * np.floor((step + np.float32(np.pi)) / np.float32(TWO_PI))
        step *= np.float32(1.0 / spacing ** 2)
        lower = [slice(None)] * phase.ndim
        upper = [slice(None)] * phase.ndim
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        result[tuple(lower)] += step
        result[tuple(upper)] -= step
    return result


def solve_poisson_neumann(laplacian, voxel_size):
    """Zero-mean solution (float32) of ``Lap(x) = laplacian`` with Neumann boundaries.

    Uses the DCT-II, whose eigenvalues are those of the periodic 7-point
    Laplacian on the mirror-padded grid of twice the size.
    """
    shape = laplacian.shape
    spectrum = sfft.dctn(laplacian, type=2, norm="ortho", workers=fourier.fft_workers())
    eigenvalues = np.zeros((1,) * len(shape), dtype=np.float32)
    for axis, (n, spacing) in enumerate(zip(shape, voxel_size)):
        # Mode m of the DCT-II is mode m of the periodic grid of size 2n. The
        # uncached function is called: these tiny 1D vectors must not evict the
        # 3D kernels held in the shared cache.
        values = fourier.laplacian_eigenvalues.__wrapped__((2 * n,), (float(spacing),))[:n]
        view = [1] * len(shape)
        view[axis] = n
        eigenvalues = eigenvalues + values.reshape(view)
    eigenvalues[(0,) * len(shape)] = 1.0
    spectrum /= eigenvalues
    del eigenvalues
    spectrum[(0,) * len(shape)] = 0
    return sfft.idctn(spectrum, type=2, norm="ortho", workers=fourier.fft_workers()).astype(
        np.float32, copy=False)
