"""The head model at its native 0.64 mm resolution, for the realistic simulator.

The labels, brain mask and white-matter regions are those of the NeuroPoly head
model of the QSM reconstruction challenge 2.0 geometry (MIT licence), stored
unchanged as uint8 by ``tools/build_fine_head_phantom.py``. The tissue table
adds, per label, the published split of the susceptibility into a paramagnetic
and a diamagnetic part with their texture weights against R2* and R1, and R1
at 3 T and 7 T; the white-matter table gives the published anisotropy of each
tract. Fibre directions are not part of the model.

A :class:`FineHeadModel` can also be built from any label volume (a sphere in
the tests), so the realistic simulator runs on synthetic objects too.
"""

import csv
import io
from dataclasses import dataclass, field
from importlib import resources
from typing import Mapping, NamedTuple, Tuple

import nibabel as nib
import numpy as np

from ..errors import QSMInputError
from ..validation import as_voxel_size

LABELS_FILE = "head_phantom_064mm_labels.nii.gz"
BRAIN_MASK_FILE = "head_phantom_064mm_brainmask.nii.gz"
WM_REGIONS_FILE = "head_phantom_064mm_wm_regions.nii.gz"
TISSUES_FILE = "head_phantom_064mm_tissues.csv"
WM_TABLE_FILE = "head_phantom_wm_regions.csv"

#: Field strengths (T) of the two tabulated R1 values.
R1_TABLE_B0_T = (3.0, 7.0)
#: Field strength (T) of the tabulated R2* values; R2* scales linearly with B0.
R2STAR_TABLE_B0_T = 3.0


class FineTissue(NamedTuple):
    """Properties of one tissue of the fine head model.

    Attributes
    ----------
    name : str
    chi_ppm : float
        Total susceptibility relative to water (ppm).
    chi_pos_ppm, chi_neg_ppm : float
        Its paramagnetic and diamagnetic parts (ppm); they add up to ``chi_ppm``
        in brain tissue.
    r2star_weight_pos, r1_weight_pos, r2star_weight_neg, r1_weight_neg : float
        Published texture weights (ppm per 1/s) of each part against the
        voxel's deviation of R2* and of R1 from the tissue mean.
    r2star_3t_hz : float
        R2* at 3 T (1/s).
    m0 : float
        Proton density relative to water.
    r1_3t_hz, r1_7t_hz : float
        R1 = 1/T1 at 3 T and 7 T (1/s).
    """

    name: str
    chi_ppm: float
    chi_pos_ppm: float
    chi_neg_ppm: float
    r2star_weight_pos: float
    r1_weight_pos: float
    r2star_weight_neg: float
    r1_weight_neg: float
    r2star_3t_hz: float
    m0: float
    r1_3t_hz: float
    r1_7t_hz: float

    @property
    def r2star_weight(self):
        """Weight (ppm per 1/s) of the total susceptibility against the R2* deviation."""
        return self.r2star_weight_pos + self.r2star_weight_neg

    @property
    def r1_weight(self):
        """Weight (ppm per 1/s) of the total susceptibility against the R1 deviation."""
        return self.r1_weight_pos + self.r1_weight_neg

    def r1_hz(self, b0_t):
        """R1 (1/s) at ``b0_t``: power law T1 ~ B0^beta through the 3 T and 7 T values."""
        if self.r1_3t_hz <= 0 or self.r1_7t_hz <= 0:
            return 0.0
        beta = np.log(self.r1_7t_hz / self.r1_3t_hz) / np.log(R1_TABLE_B0_T[1] / R1_TABLE_B0_T[0])
        return float(self.r1_3t_hz * (b0_t / R1_TABLE_B0_T[0]) ** beta)

    def r2star_hz(self, b0_t):
        """R2* (1/s) at ``b0_t``, scaled linearly with the field from the 3 T value."""
        return float(self.r2star_3t_hz * b0_t / R2STAR_TABLE_B0_T)


class WhiteMatterRegion(NamedTuple):
    """One white-matter tract: apparent chi = delta_chi cos^2(theta) + chi0 (ppm)."""

    name: str
    delta_chi_ppm: float
    chi0_ppm: float


@dataclass
class FineHeadModel:
    """A labelled object on a fine grid, with what the realistic simulator needs.

    Attributes
    ----------
    labels : ndarray of uint8, shape (X, Y, Z)
    brain_mask : ndarray of bool, shape (X, Y, Z)
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS, mm) affine.
    voxel_size_mm : tuple of 3 float
    tissues : mapping int -> FineTissue
    air_label : int
        The label of the surrounding medium: no signal, and the reference of
        the total field (the zero padding of the convolution is this medium).
    wm_regions : ndarray of uint8, shape (X, Y, Z), optional
        White-matter region per voxel (0 outside the tracts).
    wm_table : mapping int -> WhiteMatterRegion
    """

    labels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    voxel_size_mm: Tuple[float, float, float]
    tissues: Mapping[int, FineTissue]
    air_label: int
    wm_regions: np.ndarray = None
    wm_table: Mapping[int, WhiteMatterRegion] = field(default_factory=dict)

    def lookup(self, attribute, b0_t=None):
        """Per-label table (float64, indexed by label) of a tissue attribute or method."""
        table = np.zeros(256, dtype=np.float64)
        for label, tissue in self.tissues.items():
            value = getattr(tissue, attribute)
            table[int(label)] = float(value(b0_t) if callable(value) else value)
        return table

    def label_of(self, name):
        """Label number of the tissue called ``name`` (case-insensitive)."""
        for label, tissue in self.tissues.items():
            if tissue.name.lower() == name.lower():
                return int(label)
        raise QSMInputError(f"model: no tissue called {name!r} among "
                            f"{sorted(t.name for t in self.tissues.values())}")

    def validate(self):
        """Check shapes, dtypes and that every label has a tissue; returns self."""
        labels = np.asarray(self.labels)
        if labels.ndim != 3:
            raise QSMInputError(f"model labels: expected a 3D volume, got shape {labels.shape}")
        if np.asarray(self.brain_mask).shape != labels.shape:
            raise QSMInputError(f"model brain_mask: shape {np.shape(self.brain_mask)} differs from the "
                                f"labels {labels.shape}")
        missing = sorted(set(np.unique(labels).tolist()) - set(int(k) for k in self.tissues))
        if missing:
            raise QSMInputError(f"model: labels {missing} have no tissue properties")
        if self.air_label not in self.tissues:
            raise QSMInputError(f"model: air label {self.air_label} has no tissue properties")
        as_voxel_size(self.voxel_size_mm, "voxel_size_mm")
        if self.wm_regions is not None and np.asarray(self.wm_regions).shape != labels.shape:
            raise QSMInputError("model wm_regions: shape differs from the labels")
        return self


def read_fine_tissues_csv(text):
    """Parse the fine tissue table ('#' starts a comment) into {label: FineTissue}."""
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    tissues = {}
    numeric = FineTissue._fields[1:]
    for row in csv.DictReader(io.StringIO("\n".join(rows))):
        values = [float(row[name]) for name in numeric]
        tissues[int(row["label"])] = FineTissue(row["name"].strip(), *values)
    return tissues


def read_wm_regions_csv(text):
    """Parse the white-matter table into {region: WhiteMatterRegion}."""
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return {int(r["region"]): WhiteMatterRegion(r["name"].strip(), float(r["delta_chi_ppm"]),
                                                float(r["chi0_ppm"]))
            for r in csv.DictReader(io.StringIO("\n".join(rows)))}


def shipped_tissues():
    """The fine tissue table shipped in ``qsmlib/data`` ({label: FineTissue})."""
    data = resources.files("qsmlib") / "data"
    return read_fine_tissues_csv((data / TISSUES_FILE).read_text(encoding="utf-8"))


def load_fine_head_model():
    """Load the shipped 0.64 mm head model (256 x 320 x 320 voxels).

    Returns
    -------
    FineHeadModel
        Labels, brain mask and white-matter regions at 0.64 mm isotropic, the
        grid centred on the world origin (same world frame as
        :func:`qsmlib.simulation.load_head_phantom`), and the tissue and
        white-matter tables.

    References
    ----------
    Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0:
    A realistic in silico head phantom for MRI data simulation and evaluation
    of susceptibility mapping procedures. Magn Reson Med 2021;86:526-542.
    """
    data = resources.files("qsmlib") / "data"
    volumes = []
    affine = None
    for name in (LABELS_FILE, BRAIN_MASK_FILE, WM_REGIONS_FILE):
        with resources.as_file(data / name) as path:
            image = nib.load(str(path))
            # C order: NIfTI data arrive in Fortran order, which slows every whole-volume operation.
            volumes.append(np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.uint8)))
            affine = np.array(image.affine, dtype=np.float64) if affine is None else affine
    labels, mask, regions = volumes
    tissues = read_fine_tissues_csv((data / TISSUES_FILE).read_text(encoding="utf-8"))
    wm_table = read_wm_regions_csv((data / WM_TABLE_FILE).read_text(encoding="utf-8"))
    size = tuple(float(v) for v in np.round(np.linalg.norm(affine[:3, :3], axis=0), 6))
    air = next(label for label, t in tissues.items() if t.name.lower() == "air")
    return FineHeadModel(labels=labels, brain_mask=mask > 0, affine=affine, voxel_size_mm=size,
                         tissues=tissues, air_label=air, wm_regions=regions, wm_table=wm_table)
