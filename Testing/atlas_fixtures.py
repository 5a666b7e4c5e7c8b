"""Subjects made from the head model by a known deformation, for the atlas registration tests."""

import dataclasses

import numpy as np
from scipy import ndimage

from qsmlib.simulation import HeadPhantom

#: The known deformation of the tests: rotation (degrees) about an oblique axis, scale, and
#: smooth displacement bumps (centre offset from the brain centre in mm, displacement in mm).
ROTATION_DEG = 10.0
ROTATION_AXIS = (0.3, 0.2, 1.0)
SCALE = 1.1
BUMP_SIGMA_MM = 18.0
BUMPS = (((-25.0, 10.0, 10.0), (2.5, -2.0, 1.5)),
         ((25.0, -5.0, 5.0), (-2.0, 2.5, -1.5)),
         ((0.0, -30.0, -15.0), (1.5, 1.5, 3.0)))


@dataclasses.dataclass
class KnownWarp:
    """Subject world point x -> template world point T(x) = c + M (x + u(x) - c) (RAS mm)."""

    centre: np.ndarray
    matrix: np.ndarray
    bumps: tuple
    sigma_mm: float

    def displacement(self, points):
        u = np.zeros_like(points)
        for offset, vector in self.bumps:
            d2 = np.sum((points - (self.centre + np.asarray(offset))) ** 2, axis=-1, keepdims=True)
            u += np.asarray(vector) * np.exp(-0.5 * d2 / self.sigma_mm ** 2)
        return u

    def __call__(self, points):
        return self.centre + (points + self.displacement(points) - self.centre) @ self.matrix.T


def rotation(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def known_warp(phantom, *, angle_deg=ROTATION_DEG, scale=SCALE, bumps=BUMPS):
    centre = phantom.affine[:3, :3] @ np.argwhere(phantom.brain_mask).mean(axis=0) + phantom.affine[:3, 3]
    return KnownWarp(centre=centre, matrix=scale * rotation(ROTATION_AXIS, angle_deg), bumps=bumps,
                     sigma_mm=BUMP_SIGMA_MM)


def warp_volume(volume, affine, warp, *, shape=None, out_affine=None, order=0, fill=0):
    """``volume`` (on ``affine``'s grid) pulled through ``warp`` onto a grid (default: the same grid)."""
    shape = volume.shape if shape is None else tuple(shape)
    out_affine = affine if out_affine is None else out_affine
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    world = grid.reshape(-1, 3) @ out_affine[:3, :3].T + out_affine[:3, 3]
    source = (warp(world) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    values = ndimage.map_coordinates(volume, source.T, order=order, mode="constant", cval=fill)
    return values.reshape(shape).astype(volume.dtype)


def warped_phantom(phantom, warp, *, voxel_size_mm=None):
    """The head model deformed by ``warp`` (labels and brain mask by nearest neighbour).

    With ``voxel_size_mm`` the result lies on a grid of that voxel size with the
    same field of view (centre and extent), as :func:`qsmlib.simulation.load_head_phantom`
    makes it; each voxel takes the label found at its centre's image under ``warp``.
    """
    shape, affine, size = phantom.labels.shape, phantom.affine, phantom.voxel_size_mm
    if voxel_size_mm is not None:
        size = (float(voxel_size_mm),) * 3
        extent = np.asarray(phantom.labels.shape) * np.asarray(phantom.voxel_size_mm)
        shape = tuple(int(np.floor(e / size[0] + 0.5)) for e in extent)
        centre = phantom.affine[:3, :3] @ ((np.asarray(phantom.labels.shape) - 1) / 2) + phantom.affine[:3, 3]
        affine = np.eye(4)
        affine[:3, :3] = phantom.affine[:3, :3] / np.asarray(phantom.voxel_size_mm) * size[0]
        affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    air = phantom.label_of("air")
    kwargs = {"shape": shape, "out_affine": affine}
    return HeadPhantom(labels=warp_volume(phantom.labels, phantom.affine, warp, fill=air, **kwargs),
                       brain_mask=warp_volume(phantom.brain_mask.astype(np.uint8), phantom.affine, warp,
                                              **kwargs) > 0,
                       affine=affine, voxel_size_mm=size, tissues=phantom.tissues)


def known_subject(phantom, warp, template_labels, *, voxel_size_mm=2.0, seed=0, texture_ppm=0.01):
    """A subject made from the head model by ``warp``, acquired at ``voxel_size_mm``, and its truth.

    The model (at its own resolution) is deformed by nearest neighbour; its
    susceptibility, with texture, is averaged over each acquisition voxel
    (partial volume, as a scanner's voxels average tissue), and the deep grey
    matter truth takes the label that covers most of each voxel. The magnitude
    comes from :func:`qsmlib.simulation.simulate_gre` on the majority-vote
    model at the acquisition's voxel size (first echo).

    Returns
    -------
    dict
        ``chi`` (ppm, 0 outside the brain), ``magnitude``, ``mask``, ``affine``,
        ``truth`` (template label values on the acquisition grid) and ``phantom``
        (the majority-vote model at the acquisition's voxel size).
    """
    from qsmlib.simulation import simulate_gre, susceptibility_map
    from qsmlib.simulation.phantom import area_average, overlap_matrix, resample_labels

    fine = warped_phantom(phantom, warp)
    fine_truth = warp_volume(template_labels.astype(np.int32), phantom.affine, warp)
    chi_fine = np.where(fine.brain_mask, susceptibility_map(fine, texture_ppm=texture_ppm, seed=seed), 0)
    air = phantom.label_of("air")
    labels, mask, affine = resample_labels(fine.labels, fine.brain_mask, fine.affine, voxel_size_mm, fill_label=air)
    coarse = HeadPhantom(labels=labels, brain_mask=mask, affine=affine, voxel_size_mm=(float(voxel_size_mm),) * 3,
                         tissues=phantom.tissues)
    truth, _, _ = resample_labels(fine_truth, np.ones(fine_truth.shape, bool), fine.affine, voxel_size_mm,
                                  fill_label=0)
    matrices = [overlap_matrix(n, size, voxel_size_mm)[0] for n, size in zip(fine.labels.shape,
                                                                             phantom.voxel_size_mm)]
    chi = np.where(mask, area_average(chi_fine, matrices), 0).astype(np.float32)
    sim = simulate_gre(coarse, te_s=(0.004, 0.010, 0.016), snr=100, seed=seed, texture_ppm=texture_ppm)
    return {"chi": chi, "magnitude": sim.magnitude[..., 0], "mask": mask, "affine": affine,
            "truth": truth.astype(np.int32), "phantom": coarse, "sim": sim}


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 2.0 * np.logical_and(a, b).sum() / total if total else 1.0


def other_body_part(voxel_size_mm=2.0, *, with_labels=False):
    """A lower leg on a head model's tissue table: muscle, a fat rim, two bones and two vessels.

    Air outside. Its "brain mask" (where the forward model puts the local
    sources) is the muscle and vessels. With ``with_labels`` it also returns
    the eleven deep grey matter labels as blobs placed in the muscle, so that
    it can serve as a template of another body part.
    """
    from importlib import resources

    from qsmlib.simulation.phantom import TISSUES_FILE, read_tissues_csv

    tissues = read_tissues_csv((resources.files("qsmlib") / "data" / TISSUES_FILE).read_text(encoding="utf-8"))
    size = float(voxel_size_mm)
    shape = (int(round(130 / size)), int(round(130 / size)), int(round(200 / size)))
    affine = np.diag([size, size, size, 1.0])
    affine[:3, 3] = -size * (np.asarray(shape) - 1) / 2
    i, j, k = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * size for n in shape], indexing="ij")
    by_name = {t.name.lower(): label for label, t in tissues.items()}
    labels = np.full(shape, by_name["air"], np.uint8)
    r = np.hypot(i, j * 1.15)
    leg = (r < 55) & (np.abs(k) < 90)
    labels[leg] = by_name["fat"]
    labels[leg & (r < 49)] = by_name["muscle"]
    labels[leg & (np.hypot(i + 12, j - 18) < 13)] = by_name["bone"]
    labels[leg & (np.hypot(i - 22, j - 10) < 7)] = by_name["bone"]
    for ci, cj in ((-5, -20), (15, -25)):
        labels[leg & (np.hypot(i - ci, j - cj) < 3)] = by_name["blood"]
    mask = np.isin(labels, [by_name["muscle"], by_name["blood"]])
    phantom = HeadPhantom(labels=labels, brain_mask=mask, affine=affine, voxel_size_mm=(size,) * 3,
                          tissues=tissues)
    if not with_labels:
        return phantom
    dgm = np.zeros(shape, np.int32)
    centres = [(-25 + 10 * (n % 6), -35 + 25 * (n // 6), -40 + 8 * n) for n in range(11)]
    for value, (ci, cj, ck) in enumerate(centres, start=1):
        dgm[(np.hypot(np.hypot(i - ci, j - cj), k - ck) < 6) & mask] = value
    return phantom, dgm
