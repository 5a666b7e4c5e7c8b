"""Slicer glue shared by the SlicerQSM modules.

- :mod:`qsmslicer.nodes`: node <-> array (the one (k, j, i) <-> (i, j, k) transpose
  each way), IJKToRAS <-> affine, B0 direction, masks from labelmaps and segmentations;
- :mod:`qsmslicer.echo_times`: echo times and field strength from DICOM attributes;
- :mod:`qsmslicer.display`: diverging colour map centred on 0 ppm;
- :mod:`qsmslicer.progress`: qsmlib progress -> progress dialog, with Cancel;
- :mod:`qsmslicer.dependencies`: extra packages, installed only after asking;
- :mod:`qsmslicer.threads`: qsmlib computes with the thread count of Slicer's ITK;
- :mod:`qsmslicer.sample_data`: the simulated head as Sample Data, loadable by URI;
- :mod:`qsmslicer.widget`: the parameter-node scaffolding every module Widget shares;
- :mod:`qsmslicer.reconstruction`, :mod:`qsmslicer.swi`, :mod:`qsmslicer.roi`: the modules'
  Logic on a scene (nodes in, qsmlib, nodes out), which each module adds its parameter node
  to and the web app runs as it is;
- :mod:`qsmslicer.i18n`: Slicer's ``tr`` and ``translate``, the identity without Slicer.

It is the second package of the qsmlib distribution, installed next to qsmlib.
Everything but :mod:`qsmslicer.widget` needs only MRML (``slicer``, ``vtk``) and
qsmlib: the Logic runs in Slicer's Python console, in scripts, and on a plain
scene of the slicer-core wheel, which has no Slicer application and no Qt
(those are imported only inside the functions that show dialogs or use
Slicer's cache folder).
"""
