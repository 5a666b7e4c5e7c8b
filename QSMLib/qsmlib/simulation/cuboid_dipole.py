"""Exact field of uniformly magnetised cuboid voxels: the realistic simulator's forward model.

The inversions model the field as ``IFFT(D(k) FFT(chi))`` with the discrete
kernel ``D(k) = 1/3 - (k.b)^2/|k|^2`` sampled on the DFT grid
(:mod:`qsmlib.dipole`), which treats ``chi`` as periodic and band-limited.
A simulation that uses the same kernel commits the "inverse crime": the
inversions then meet their own model exactly. Here each voxel is what the head
model says it is, a cuboid of uniform susceptibility in an infinite medium, and
the field at every voxel centre is the exact sum of the fields of all cuboids:

- the magnetised cuboid's field comes from the closed-form second derivatives
  of its Newtonian potential (Joseph & Schloemann 1965; the demagnetising
  tensor of a prism, Newell et al. 1993);
- the Lorentz-sphere correction subtracts 2/3 of the magnetisation inside the
  source voxel (so a uniformly magnetised sphere has no field inside it, and the
  far field is the point dipole ``V (3 cos^2 theta - 1) / (4 pi r^3)``);
- the sum over voxels is a linear (not circular) convolution, evaluated with
  FFTs on a grid of at least twice the size, so no source wraps around; the
  medium beyond the grid is the zero of ``chi``.

Beyond :data:`NEAR_FIELD_VOXELS` voxels the cuboid's field equals the point
dipole's to about 1e-5 of the local dipole amplitude for cubic voxels (the
quadrupole term vanishes by symmetry; for elongated voxels it does not, and
the error at that distance is of order (edge / distance)^2); the kernel uses
the exact formula inside that distance and the point dipole outside.

References
----------
Joseph RI, Schloemann E. Demagnetizing field in nonellipsoidal bodies.
J Appl Phys 1965;36:1579-1593.

Newell AJ, Williams W, Dunlop DJ. A generalization of the demagnetizing tensor
for nonuniform magnetization. J Geophys Res 1993;98:9551-9555.

Salomir R, de Senneville BD, Moonen CTW. A fast calculation method for magnetic
field inhomogeneity due to an arbitrary distribution of bulk susceptibility.
Concepts Magn Reson B 2003;19B:26-34.

Marques JP, Bowtell R. Application of a Fourier-based method for rapid
calculation of field inhomogeneity due to spatial variation of magnetic
susceptibility. Concepts Magn Reson B 2005;25B:65-78.
"""

import numpy as np
import scipy.fft as sfft

from .. import fourier
from ..validation import as_b0_dir, as_voxel_size

#: Half-width (voxels) of the block around the source where the exact cuboid formula is used.
NEAR_FIELD_VOXELS = 12


def cuboid_field(x_mm, y_mm, z_mm, voxel_size_mm, b0_dir):
    """Field along B0 (per unit susceptibility) of one uniformly magnetised cuboid voxel.

    The cuboid is centred on the origin with edges ``voxel_size_mm`` along the
    axes and is magnetised along ``b0_dir``. The result is the relative field
    (Lorentz-sphere corrected, the same unit as the susceptibility) at the
    points ``(x, y, z)`` (mm, broadcastable arrays; points on a face plane
    are not allowed).

    With ``Phi`` the Newtonian potential of the cuboid (integral of 1/|r - r'|
    over it), the field is ``[inside]/3 + (1/4 pi) b . grad grad Phi . b``, and
    the second derivatives are sums over the eight corners (X, Y, Z) =
    corner - point with sign s (+ for an upper, - for a lower bound per axis)::

        d2Phi/dz2   = -sum s atan(X Y / (Z R))
        d2Phi/dxdy  =  sum s ln(Z + R),    R = sqrt(X^2 + Y^2 + Z^2)

    and their permutations.

    Returns
    -------
    ndarray of float64
    """
    h = [0.5 * v for v in as_voxel_size(voxel_size_mm, "voxel_size_mm")]
    b = as_b0_dir(b0_dir)
    point = [np.asarray(c, dtype=np.float64) for c in (x_mm, y_mm, z_mm)]
    shape = np.broadcast_shapes(*(p.shape for p in point))
    second = {key: np.zeros(shape) for key in ("xx", "yy", "zz", "xy", "xz", "yz")}
    for sx in (-1.0, 1.0):
        big_x = sx * h[0] - point[0]
        for sy in (-1.0, 1.0):
            big_y = sy * h[1] - point[1]
            for sz in (-1.0, 1.0):
                big_z = sz * h[2] - point[2]
                s = sx * sy * sz
                r = np.sqrt(big_x * big_x + big_y * big_y + big_z * big_z)
                second["zz"] -= s * np.arctan(big_x * big_y / (big_z * r))
                second["xx"] -= s * np.arctan(big_y * big_z / (big_x * r))
                second["yy"] -= s * np.arctan(big_x * big_z / (big_y * r))
                second["xy"] += s * _log_sum(big_z, big_x, big_y, r)
                second["xz"] += s * _log_sum(big_y, big_x, big_z, r)
                second["yz"] += s * _log_sum(big_x, big_y, big_z, r)
    quadratic = (b[0] * b[0] * second["xx"] + b[1] * b[1] * second["yy"] + b[2] * b[2] * second["zz"]
                 + 2.0 * (b[0] * b[1] * second["xy"] + b[0] * b[2] * second["xz"]
                          + b[1] * b[2] * second["yz"]))
    inside = (np.abs(point[0]) < h[0]) & (np.abs(point[1]) < h[1]) & (np.abs(point[2]) < h[2])
    return inside / 3.0 + quadratic / (4.0 * np.pi)


def _log_sum(t, u, v, r):
    """ln(t + r) with r = sqrt(t^2 + u^2 + v^2), without cancellation for t << 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t >= 0, np.log(np.maximum(t + r, 1e-300)),
                        np.log((u * u + v * v) / (r - t)))


def point_dipole_field(x_mm, y_mm, z_mm, volume_mm3, b0_dir):
    """Field along B0 of a point dipole of volume ``volume_mm3`` per unit susceptibility (0 at r = 0)."""
    b = as_b0_dir(b0_dir)
    x, y, z = (np.asarray(c, dtype=np.float64) for c in (x_mm, y_mm, z_mm))
    r2 = x * x + y * y + z * z
    along = x * b[0] + y * b[1] + z * b[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = volume_mm3 * (3.0 * along * along - r2) / (4.0 * np.pi * r2 * r2 * np.sqrt(r2))
    return np.where(r2 > 0, value, 0.0)


class CuboidDipoleOperator:
    """Linear convolution of a volume of a given shape with the cuboid-voxel field kernel.

    The kernel is built once (in real space on a grid of at least ``2 n - 1``
    per axis, then transformed); :meth:`apply` maps susceptibility (any unit)
    to field (same unit) on the input grid.

    Parameters
    ----------
    shape : tuple of 3 int
        Shape of the volumes to convolve.
    voxel_size_mm : sequence of 3 float
    b0_dir : sequence of 3 float
        B0 direction in voxel coordinates.
    near_field_voxels : int, optional
        Half-width of the block where the exact cuboid formula replaces the
        point dipole.

    Notes
    -----
    Memory: the real spectrum of the kernel, 4 bytes per voxel of the padded
    grid's half spectrum (about 0.4 GiB for the 256 x 320 x 320 head).
    """

    def __init__(self, shape, voxel_size_mm, b0_dir, *, near_field_voxels=NEAR_FIELD_VOXELS):
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape {shape} is not a 3D shape")
        self.voxel_size_mm = as_voxel_size(voxel_size_mm, "voxel_size_mm")
        self.b0_dir = as_b0_dir(b0_dir)
        self.padded_shape = fourier.padded_shape(self.shape, [n - 1 for n in self.shape])
        kernel = self._real_space_kernel(int(near_field_voxels))
        # The kernel is even (k(-r) = k(r)) on the padded grid, so its spectrum is real.
        spectrum = fourier.rfft(kernel)
        del kernel
        self.spectrum = np.ascontiguousarray(spectrum.real, dtype=np.float32)

    def _real_space_kernel(self, near):
        padded = self.padded_shape
        # Signed displacement (voxels) per padded index. Displacements beyond n - 1
        # never occur in the linear convolution (padded >= 2 n - 1); they are zeroed,
        # which also keeps the kernel exactly even on the periodic grid.
        offsets = []
        for p in padded:
            index = np.arange(p)
            offsets.append(np.where(index <= p // 2, index, index - p))
        size = self.voxel_size_mm
        b = self.b0_dir
        kernel = np.empty(padded, dtype=np.float32)
        y = (offsets[1] * size[1]).astype(np.float32)[:, None]
        z = (offsets[2] * size[2]).astype(np.float32)[None, :]
        yz2 = y * y + z * z
        along_yz = y * np.float32(b[1]) + z * np.float32(b[2])
        scale = np.float32(float(np.prod(size)) / (4.0 * np.pi))
        # k(-r) = k(r): the slab at -x is the slab at +x with y and z reversed.
        reverse = [np.r_[0, p - 1:0:-1] for p in padded[1:]]
        for i in range(padded[0] // 2 + 1):
            x = np.float32(offsets[0][i] * size[0])
            r2 = yz2 + x * x
            along = along_yz + x * np.float32(b[0])
            with np.errstate(divide="ignore", invalid="ignore"):
                plane = along * along
                plane *= 3.0
                plane -= r2
                plane *= scale
                plane /= r2 * r2 * np.sqrt(r2)
            if i == 0:
                plane[0, 0] = 0.0
            kernel[i] = plane
            if 0 < i and padded[0] - i != i:
                kernel[padded[0] - i] = plane[reverse[0]][:, reverse[1]]
        for axis, (n, offset) in enumerate(zip(self.shape, offsets)):
            beyond = np.nonzero(np.abs(offset) > n - 1)[0]
            index = [slice(None)] * 3
            index[axis] = beyond
            kernel[tuple(index)] = 0.0
        # Exact cuboid field in the near block.
        near_index = []
        for n, p in zip(self.shape, padded):
            reach = min(near, n - 1)
            near_index.append(np.unique(np.r_[0:reach + 1, p - reach:p] % p))
        grids = np.meshgrid(*(offsets[a][near_index[a]] * size[a] for a in range(3)), indexing="ij")
        block = cuboid_field(*grids, size, b)
        kernel[np.ix_(*near_index)] = block.astype(np.float32)
        return kernel

    def apply(self, chi):
        """Field of ``chi`` (same unit) at the voxel centres of its grid (float32).

        The transforms go one axis at a time and skip what is known to be zero
        (the padding on the way in) or not needed (beyond the volume on the
        way out), which saves about 40 % of a full padded FFT pair.
        """
        chi = np.asarray(chi, dtype=np.float32)
        if chi.shape != self.shape:
            raise ValueError(f"chi has shape {chi.shape}; this operator was built for {self.shape}")
        (n0, n1, n2), (p0, p1, p2) = self.shape, self.padded_shape
        workers = fourier.fft_workers()
        spectrum = sfft.rfft(chi, n=p2, axis=2, workers=workers)
        spectrum = sfft.fft(spectrum, n=p1, axis=1, workers=workers, overwrite_x=True)
        spectrum = sfft.fft(spectrum, n=p0, axis=0, workers=workers, overwrite_x=True)
        spectrum *= self.spectrum
        spectrum = sfft.ifft(spectrum, axis=0, workers=workers, overwrite_x=True)[:n0]
        spectrum = sfft.ifft(spectrum, axis=1, workers=workers)[:, :n1]
        field = sfft.irfft(spectrum, n=p2, axis=2, workers=workers)[:, :, :n2]
        del spectrum
        return np.ascontiguousarray(field, dtype=np.float32)


_LAST_OPERATOR = []


def cuboid_dipole_operator(shape, voxel_size_mm, b0_dir):
    """A :class:`CuboidDipoleOperator`, the last one built kept for reuse (one at a time)."""
    key = (tuple(int(n) for n in shape), as_voxel_size(voxel_size_mm, "voxel_size_mm"), as_b0_dir(b0_dir))
    if _LAST_OPERATOR and _LAST_OPERATOR[0][0] == key:
        return _LAST_OPERATOR[0][1]
    _LAST_OPERATOR.clear()
    operator = CuboidDipoleOperator(*key)
    _LAST_OPERATOR.append((key, operator))
    return operator


def cuboid_dipole_convolve(chi, voxel_size_mm, b0_dir):
    """Field (same unit as ``chi``) of a map of uniformly magnetised cuboid voxels, at the voxel centres.

    Outside the array the susceptibility is zero (an infinite medium of the
    reference susceptibility). See :class:`CuboidDipoleOperator`.
    """
    chi = np.asarray(chi, dtype=np.float32)
    return cuboid_dipole_operator(chi.shape, voxel_size_mm, b0_dir).apply(chi)
