"""Slicer glue shared by the SlicerQSM modules.

- :mod:`qsmslicer.nodes`: node <-> array (the one (k, j, i) <-> (i, j, k) transpose
  each way), IJKToRAS <-> affine, B0 direction, masks from labelmaps and segmentations;
- :mod:`qsmslicer.echo_times`: echo times and field strength from DICOM attributes;
- :mod:`qsmslicer.display`: diverging colour map centred on 0 ppm;
- :mod:`qsmslicer.progress`: qsmlib progress -> progress dialog, with Cancel;
- :mod:`qsmslicer.dependencies`: extra packages, installed only after asking;
- :mod:`qsmslicer.threads`: qsmlib computes with the thread count of Slicer's ITK;
- :mod:`qsmslicer.sample_data`: the simulated head as Sample Data, loadable by URI;
- :mod:`qsmslicer.widget`: the parameter-node scaffolding every module Widget shares.

Everything but :mod:`qsmslicer.widget` needs only MRML (``slicer``, ``vtk``) and
qsmlib, so the Logic runs in Slicer's Python console and in scripts.
"""
