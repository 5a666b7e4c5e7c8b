"""Slicer glue shared by the SlicerQSM modules.

- :mod:`qsmslicer.nodes`: node <-> array (the one (k, j, i) <-> (i, j, k) transpose
  each way), IJKToRAS <-> affine, B0 direction, masks from labelmaps and segmentations;
- :mod:`qsmslicer.echo_times`: echo times and field strength from DICOM attributes;
- :mod:`qsmslicer.display`: diverging colour map centred on 0 ppm;
- :mod:`qsmslicer.progress`: qsmlib progress -> progress dialog, with Cancel;
- :mod:`qsmslicer.dependencies`: extra packages, installed only after asking;
- :mod:`qsmslicer.widget`: the parameter-node scaffolding every module Widget shares.

Needs only MRML (``slicer``, ``vtk``) and qsmlib: no Qt, so it runs with
slicer-core as well as inside Slicer.
"""
