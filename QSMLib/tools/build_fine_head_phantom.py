#!/usr/bin/env python
"""Build the native-resolution (0.64 mm) head model shipped for the realistic simulator.

Input: a folder holding the NeuroPoly head model of the QSM reconstruction
challenge 2.0 geometry (Susceptibility-Separation-Phantom, MIT licence):
``SegmentedModel.nii.gz`` (256 x 320 x 320 labels at 0.64 mm), ``BrainMask.nii.gz``,
``white_matter_regions.nii.gz`` and ``.csv``, ``susceptibility_separation.csv``
and ``LICENSE``.

Output (in ``qsmlib/data`` unless ``--out`` says otherwise), read by
:func:`qsmlib.simulation.fine_phantom.load_fine_head_model`:

- ``head_phantom_064mm_labels.nii.gz``: the labels, unchanged, stored as uint8;
- ``head_phantom_064mm_brainmask.nii.gz``: the brain mask (uint8);
- ``head_phantom_064mm_wm_regions.nii.gz``: white-matter regions 1-11 (uint8);
- ``head_phantom_064mm_tissues.csv``: per label the total susceptibility, its
  positive and negative parts and their published texture weights against
  R2* and R1 (from ``susceptibility_separation.csv``), plus R2* at 3 T and
  proton density (from the shipped ``head_phantom_tissues.csv``) and R1 at
  3 T and 7 T (rounded literature values, listed below);
- ``head_phantom_wm_regions.csv``: per region the published anisotropy
  delta chi and isotropic part chi0 (ppm);
- ``LICENSE-head-phantom-064mm.txt``: the source's MIT licence and attribution.

The affine is 0.64 mm diagonal RAS with the grid centre at the world origin,
the same world frame as the shipped 1 mm phantom.

Usage::

    python tools/build_fine_head_phantom.py /work/shared/data/head-phantom [--out DIR] [--force]
"""

import argparse
import csv
import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmlib.simulation.phantom import read_tissues_csv

VOXEL_SIZE_MM = 0.64
LABELS_FILE = "head_phantom_064mm_labels.nii.gz"
BRAIN_MASK_FILE = "head_phantom_064mm_brainmask.nii.gz"
WM_REGIONS_FILE = "head_phantom_064mm_wm_regions.nii.gz"
TISSUES_FILE = "head_phantom_064mm_tissues.csv"
WM_TABLE_FILE = "head_phantom_wm_regions.csv"
LICENSE_FILE = "LICENSE-head-phantom-064mm.txt"
COARSE_TISSUES_FILE = "head_phantom_tissues.csv"

# Longitudinal relaxation time T1 (s) at 3 T and at 7 T per tissue name; R1 = 1 / T1.
# Rounded values from: Rooney WD et al., Magn Reson Med 2007;57:308-318 (white and
# cortical grey matter, caudate, putamen, thalamus, CSF, blood at 1.5-7 T);
# Wansapura JP et al., J Magn Reson Imaging 1999;9:531-538 (3 T); Marques JP et al.,
# NeuroImage 2010;49:1271-1281 (MP2RAGE at 7 T); Lu H et al., Magn Reson Med
# 2004;52:679-682 (blood at 3 T); Stanisz GJ et al., Magn Reson Med 2005;54:507-512
# (muscle); Du J, Bydder GM, NMR Biomed 2013;26:489-506 (cortical bone). The iron-rich
# nuclei (globus pallidus, red nucleus, substantia nigra, dentate) get shorter T1 than
# the striatum. Air has no signal; its value is irrelevant (0 means no recovery term).
T1_S = {
    "caudate": (1.40, 1.70),
    "gp": (1.05, 1.25),
    "putamen": (1.30, 1.60),
    "rn": (1.05, 1.25),
    "dn": (1.10, 1.30),
    "snandstn": (1.05, 1.25),
    "thalamus": (1.20, 1.45),
    "wm": (0.95, 1.20),
    "gm": (1.55, 2.00),
    "csf": (4.20, 4.40),
    "blood": (1.65, 2.10),
    "fat": (0.38, 0.58),
    "bone": (0.25, 0.30),
    "air": (None, None),
    "muscle": (1.40, 1.90),
    "calcification": (0.30, 0.35),
}

ATTRIBUTION = """\
Head phantom data at native resolution: derived from the anatomical head model of
the QSM reconstruction challenge 2.0 geometry, as published by NeuroPoly
(Susceptibility-Separation-Phantom, MIT licence, 2024).

The files head_phantom_064mm_labels.nii.gz, head_phantom_064mm_brainmask.nii.gz,
head_phantom_064mm_wm_regions.nii.gz, head_phantom_064mm_tissues.csv and
head_phantom_wm_regions.csv in this folder were derived from that model by
tools/build_fine_head_phantom.py: the 0.64 mm labels, brain mask and white-matter
regions are stored unchanged as uint8; the per-tissue susceptibility, its
positive and negative parts, their texture weights against R2* and R1, and the
white-matter anisotropy are copied from the published tables; R1 at 3 T and 7 T,
R2* at 3 T and proton density are literature values added by QSMLib.

References: Marques JP, Meineke J, Milovic C, et al. QSM reconstruction
challenge 2.0: A realistic in silico head phantom for MRI data simulation and
evaluation of susceptibility mapping procedures. Magn Reson Med
2021;86:526-542. doi:10.1002/mrm.28716

The licence of the source data follows.

"""


def _get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path,
                        help="folder with SegmentedModel.nii.gz, BrainMask.nii.gz, white_matter_regions.*, "
                             "susceptibility_separation.csv, LICENSE")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "qsmlib" / "data",
                        help="output folder (default: qsmlib/data next to this script)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return parser


def centred_affine(shape, voxel_size_mm):
    """Diagonal RAS affine whose grid centre is the world origin."""
    affine = np.diag([voxel_size_mm] * 3 + [1.0])
    affine[:3, 3] = -0.5 * (np.asarray(shape) - 1) * voxel_size_mm
    return affine


def save_uint8(volume, affine, path):
    """Write a uint8 NIfTI with maximum, reproducible gzip compression."""
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.uint8), affine)
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=9, mtime=0))


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def tissue_rows(separation_csv, coarse_tissues):
    """Rows of the fine tissues table, one per label of the published separation table."""
    rows = []
    for row in _read_csv(separation_csv):
        label = int(row["label"])
        name = row["name"].strip()
        coarse = coarse_tissues[label]
        if coarse.name.lower() != name.lower():
            raise ValueError(f"label {label}: {name!r} in the source, {coarse.name!r} in {COARSE_TISSUES_FILE}")
        t1_3t, t1_7t = T1_S[name.lower()]
        rows.append([label, name, row["chi_total_ppm"].strip(), row["chi_pos_ppm"].strip(),
                     row["chi_neg_ppm"].strip(), row["r2star_weight_pos"].strip(), row["r1_weight_pos"].strip(),
                     row["r2star_weight_neg"].strip(), row["r1_weight_neg"].strip(),
                     f"{coarse.r2star_3t_hz:g}", f"{coarse.m0:g}",
                     "0" if t1_3t is None else f"{1.0 / t1_3t:.4g}",
                     "0" if t1_7t is None else f"{1.0 / t1_7t:.4g}"])
    return rows


TISSUE_COLUMNS = ["label", "name", "chi_ppm", "chi_pos_ppm", "chi_neg_ppm", "r2star_weight_pos",
                  "r1_weight_pos", "r2star_weight_neg", "r1_weight_neg", "r2star_3t_hz", "m0",
                  "r1_3t_hz", "r1_7t_hz"]

TISSUE_COMMENT = """\
Tissues of the 0.64 mm head model (NeuroPoly, QSM challenge 2.0 geometry, MIT licence).
chi_ppm, chi_pos_ppm, chi_neg_ppm: total susceptibility relative to water and its
paramagnetic and diamagnetic parts, and r2star_weight_*, r1_weight_*: the published texture
weights (ppm per 1/s) of each part against the deviation of R2* and of R1 from the tissue
mean, copied from susceptibility_separation.csv of the source (positive + negative = total
holds in brain tissue only).
r2star_3t_hz, m0: R2* at 3 T (1/s) and proton density, as in head_phantom_tissues.csv.
r1_3t_hz, r1_7t_hz: R1 = 1/T1 (1/s) at 3 T and 7 T, rounded literature values (Rooney et al.
MRM 2007;57:308; Wansapura et al. JMRI 1999;9:531; Marques et al. NeuroImage 2010;49:1271;
Lu et al. MRM 2004;52:679; Stanisz et al. MRM 2005;54:507; Du and Bydder NMR Biomed
2013;26:489). Air has no signal."""

WM_COMMENT = """\
White-matter regions of the 0.64 mm head model (NeuroPoly, MIT licence): published
anisotropy delta_chi_ppm = chi_parallel - chi_perpendicular and isotropic part chi0_ppm;
apparent susceptibility delta_chi cos^2(theta) + chi0, theta the fibre-to-B0 angle.
The source gives no fibre directions."""


def write_csv(path, comment, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        for line in comment.splitlines():
            handle.write(f"# {line}\n" if line else "#\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def main(argv=None):
    args = _get_parser().parse_args(argv)
    source = args.source
    names = (LABELS_FILE, BRAIN_MASK_FILE, WM_REGIONS_FILE, TISSUES_FILE, WM_TABLE_FILE, LICENSE_FILE)
    outputs = [args.out / name for name in names]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.force:
        print(f"error: {', '.join(existing)} exist; use --force to overwrite", file=sys.stderr)
        return 1
    coarse_path = args.out / COARSE_TISSUES_FILE
    if not coarse_path.is_file():
        print(f"error: {coarse_path} not found; run tools/build_head_phantom.py first", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    model = nib.load(str(source / "SegmentedModel.nii.gz"))
    labels = np.asarray(model.dataobj)
    if labels.max() > 255 or labels.min() < 0:
        raise ValueError("labels do not fit in uint8")
    size = np.linalg.norm(model.affine[:3, :3], axis=0)
    if not np.allclose(size, VOXEL_SIZE_MM, atol=1e-5):
        raise ValueError(f"voxel size {size} is not {VOXEL_SIZE_MM} mm")
    mask = np.asarray(nib.load(str(source / "BrainMask.nii.gz")).dataobj) > 0.5
    regions = np.rint(np.asarray(nib.load(str(source / "white_matter_regions.nii.gz")).dataobj))
    if regions.shape != labels.shape or mask.shape != labels.shape:
        raise ValueError("the brain mask and the white-matter regions must share the label grid")
    affine = centred_affine(labels.shape, VOXEL_SIZE_MM)

    save_uint8(labels, affine, outputs[0])
    save_uint8(mask, affine, outputs[1])
    save_uint8(regions, affine, outputs[2])
    coarse = read_tissues_csv(coarse_path.read_text(encoding="utf-8"))
    write_csv(outputs[3], TISSUE_COMMENT, TISSUE_COLUMNS,
              tissue_rows(source / "susceptibility_separation.csv", coarse))
    wm_rows = [[int(r["region"]), r["name"].strip(), r["delta_chi_ppm"].strip(), r["chi0_ppm"].strip()]
               for r in _read_csv(source / "white_matter_regions.csv")]
    write_csv(outputs[4], WM_COMMENT, ["region", "name", "delta_chi_ppm", "chi0_ppm"], wm_rows)
    outputs[5].write_text(ATTRIBUTION + (source / "LICENSE").read_text(encoding="utf-8"), encoding="utf-8")

    print(f"labels {labels.shape} at {VOXEL_SIZE_MM:g} mm; brain {mask.sum() * VOXEL_SIZE_MM ** 3 / 1000:.1f} mL; "
          f"white-matter regions {sorted(int(r) for r in np.unique(regions) if r > 0)}")
    for path in outputs:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
