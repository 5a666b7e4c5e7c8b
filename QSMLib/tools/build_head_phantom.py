#!/usr/bin/env python
"""Build the compact head phantom shipped in ``qsmlib/data`` from the full-resolution model.

Input: a folder holding the NeuroPoly head model of the QSM reconstruction
challenge 2.0 geometry (``SegmentedModel.nii.gz``, 256 x 320 x 320 labels at
0.64 mm; ``BrainMask.nii.gz``; ``labels.csv``; ``LICENSE``).

Output (in ``qsmlib/data`` unless ``--out`` says otherwise):

- ``head_phantom_1mm_labels.nii.gz``: 1 mm labels (164 x 205 x 205, uint8),
  majority vote of the label occupancy;
- ``head_phantom_1mm_brainmask.nii.gz``: brain mask, occupancy > 0.5 (uint8);
- ``head_phantom_tissues.csv``: label, name, chi_ppm (from labels.csv),
  R2* at 3 T and relative proton density (literature values below);
- ``LICENSE-head-phantom.txt``: the source's MIT licence and attribution.

The affine is 1 mm diagonal RAS with the grid centre at the world origin.

Usage::

    python tools/build_head_phantom.py /work/shared/data/head-phantom [--out DIR] [--force]
"""

import argparse
import csv
import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from qsmlib.simulation.phantom import (BRAIN_MASK_FILE, LABELS_FILE, TISSUES_FILE,
                                       read_tissues_csv, resample_labels)

LICENSE_FILE = "LICENSE-head-phantom.txt"
VOXEL_SIZE_MM = 1.0

# R2* at 3 T (1/s) and relative proton density M0 (water = 1) per tissue name.
# Sources (values rounded; R2* = R2 + R2' where both were reported):
#   grey matter nuclei, cortex, frontal white matter: Gelman N et al., Radiology
#     1999;210:759-767 (3 T), and the review of Haacke EM et al., Magn Reson
#     Imaging 2005;23:1-25 (red nucleus, substantia nigra, dentate nucleus);
#   venous blood (Y ~ 0.6, Hct ~ 0.4): Blockley NP et al., Magn Reson Med
#     2008;60:1313-1320;
#   proton density of brain tissues: water content of Neeb H et al.,
#     NeuroImage 2006;31:1156-1168 (WM ~0.69, GM ~0.80, CSF 1);
#   cortical bone (T2* ~0.4 ms, water ~0.2): Du J, Bydder GM, NMR Biomed
#     2013;26:489-506; calcification treated like bone;
#   muscle and fat: typical 3 T values (T2* ~ 28 ms); fat has no voxels.
#   Air has no signal (M0 = 0); its R2* is irrelevant.
RELAXATION = {
    "caudate": (21.0, 0.82),
    "gp": (38.0, 0.72),
    "putamen": (25.0, 0.80),
    "rn": (30.0, 0.75),
    "dn": (30.0, 0.76),
    "snandstn": (35.0, 0.75),
    "thalamus": (20.0, 0.77),
    "wm": (21.0, 0.69),
    "gm": (16.0, 0.80),
    "csf": (3.0, 1.00),
    "blood": (35.0, 0.85),
    "fat": (35.0, 0.90),
    "bone": (2500.0, 0.20),
    "air": (0.0, 0.00),
    "muscle": (35.0, 0.75),
    "calcification": (1000.0, 0.10),
}

ATTRIBUTION = """\
Head phantom data: derived from the anatomical head model of the QSM
reconstruction challenge 2.0 geometry, as published by NeuroPoly
(Susceptibility-Separation-Phantom, MIT licence, 2024).

The files head_phantom_1mm_labels.nii.gz, head_phantom_1mm_brainmask.nii.gz and
head_phantom_tissues.csv in this folder were derived from that model by
tools/build_head_phantom.py: the 0.64 mm labels were reduced to 1 mm by
majority vote, the brain mask by occupancy > 0.5, and R2* and proton density
values from the literature were added to the published susceptibility values.

Reference: Marques JP, Meineke J, Milovic C, et al. QSM reconstruction
challenge 2.0: A realistic in silico head phantom for MRI data simulation and
evaluation of susceptibility mapping procedures. Magn Reson Med
2021;86:526-542. doi:10.1002/mrm.28716

The licence of the source data follows.

"""


def _get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path,
                        help="folder with SegmentedModel.nii.gz, BrainMask.nii.gz, labels.csv, LICENSE")
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


def tissues_table(labels_csv):
    """Rows (label, name, chi_ppm, r2star_3t_hz, m0) from the source labels.csv."""
    rows = []
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            r2star, m0 = RELAXATION[row["name"].strip().lower()]
            rows.append((int(row["label"]), row["name"].strip(), row["chi_ppm"].strip(), r2star, m0))
    return rows


def write_tissues_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        for line in _source_comment().splitlines():
            handle.write(f"# {line}\n" if line else "#\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["label", "name", "chi_ppm", "r2star_3t_hz", "m0"])
        for label, name, chi, r2star, m0 in rows:
            writer.writerow([label, name, chi, f"{r2star:g}", f"{m0:g}"])


def _source_comment():
    return (
        "Head phantom tissues. chi_ppm: susceptibility relative to water, copied from the\n"
        "labels.csv of the NeuroPoly head model (QSM challenge 2.0 geometry, MIT licence).\n"
        "r2star_3t_hz: R2* at 3 T in 1/s; m0: proton density relative to water. Sources:\n"
        "Gelman et al., Radiology 1999;210:759 (deep grey matter, cortex, white matter);\n"
        "Haacke et al., Magn Reson Imaging 2005;23:1 (red nucleus, substantia nigra, dentate);\n"
        "Blockley et al., Magn Reson Med 2008;60:1313 (venous blood);\n"
        "Neeb et al., NeuroImage 2006;31:1156 (water content of brain tissues);\n"
        "Du and Bydder, NMR Biomed 2013;26:489 (cortical bone); muscle, fat: typical 3 T values.\n"
        "Values are rounded; air has no signal.")


def main(argv=None):
    args = _get_parser().parse_args(argv)
    source = args.source
    outputs = [args.out / name for name in (LABELS_FILE, BRAIN_MASK_FILE, TISSUES_FILE, LICENSE_FILE)]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.force:
        print(f"error: {', '.join(existing)} exist; use --force to overwrite", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    model = nib.load(str(source / "SegmentedModel.nii.gz"))
    labels = np.asarray(model.dataobj).astype(np.uint8)
    mask = np.asarray(nib.load(str(source / "BrainMask.nii.gz")).dataobj) > 0.5
    size_in = float(np.linalg.norm(model.affine[:3, 0]))
    rows = tissues_table(source / "labels.csv")
    air = next(label for label, name, *_ in rows if name.lower() == "air")

    # Resample on a grid centred on the origin, so the output centre is the origin too.
    affine_in = centred_affine(labels.shape, size_in)
    labels_1mm, mask_1mm, affine = resample_labels(labels, mask, affine_in, VOXEL_SIZE_MM,
                                                   fill_label=air)
    affine = centred_affine(labels_1mm.shape, VOXEL_SIZE_MM)  # exact, free of rounding

    save_uint8(labels_1mm, affine, outputs[0])
    save_uint8(mask_1mm, affine, outputs[1])
    write_tissues_csv(rows, outputs[2])
    outputs[3].write_text(ATTRIBUTION + (source / "LICENSE").read_text(encoding="utf-8"),
                          encoding="utf-8")

    # Summary: volumes per label before and after (mL).
    tissues = read_tissues_csv(outputs[2].read_text(encoding="utf-8"))
    voxel_in_ml = size_in ** 3 / 1000.0
    before = np.bincount(labels.ravel(), minlength=256) * voxel_in_ml
    after = np.bincount(labels_1mm.ravel(), minlength=256) * VOXEL_SIZE_MM ** 3 / 1000.0
    print(f"labels {labels.shape} at {size_in:g} mm -> {labels_1mm.shape} at {VOXEL_SIZE_MM:g} mm")
    print(f"brain mask: {mask.sum() * voxel_in_ml:.1f} mL -> {mask_1mm.sum() / 1000.0:.1f} mL")
    for label, tissue in sorted(tissues.items()):
        print(f"  {label:3d} {tissue.name:14s} {before[label]:9.2f} mL -> {after[label]:9.2f} mL")
    for path in outputs:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
