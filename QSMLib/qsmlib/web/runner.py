"""One reconstruction of the web app: the shared Logic in a worker thread, on a private scene.

MRML and VTK rendering are not thread-safe, and the app's scene is rendered
by the server thread for the browser. So a run never touches that scene from
another thread:

1. :class:`ReconstructionJob` (built on the server thread) copies the input
   nodes into a private ``vtkMRMLScene``;
2. :meth:`ReconstructionJob.start` runs
   ``qsmslicer.reconstruction.ReconstructionLogic().process`` (the Logic of
   the Slicer module, nothing re-implemented here) on that scene in a worker
   thread; progress and the end are reported through callbacks that the app
   hands on to its event loop;
3. :meth:`ReconstructionJob.copy_outputs` (back on the server thread) copies
   the output nodes, their display settings and attributes into the app's
   scene.
"""

import threading

from ..errors import Cancelled

#: Outputs of a run, in the order they are copied: attribute of ReconstructionOutputs -> node name suffix.
OUTPUT_NODES = ("susceptibility", "local_field", "total_field", "mask")


def copy_volume(node, scene):
    """A copy of a volume node (voxels, geometry, attributes, diverging display) added to ``scene``.

    The display follows the source's: a diverging colour map keeps its window
    (set by :mod:`qsmslicer.display` in the Logic); other volumes get the
    default display of their class.
    """
    from qsmslicer import display, nodes

    copy = nodes.output_volume(scene, node.GetName(), nodes.array_from_volume(node), nodes.ijk_to_ras(node),
                               class_name=node.GetClassName())
    for name in node.GetAttributeNames() or ():
        copy.SetAttribute(name, node.GetAttribute(name))
    units = node.GetVoxelValueUnits()
    if units is not None:
        copy.SetVoxelValueUnits(units)
    source = node.GetDisplayNode()
    color = source.GetColorNode() if source is not None and source.IsA("vtkMRMLScalarVolumeDisplayNode") else None
    if color is not None and (color.GetID() == display.SLICER_DIVERGING_COLOR_ID
                              or color.GetAttribute(display.DIVERGING_ATTRIBUTE) == "1"):
        display.show_diverging(copy, source.GetWindow() / 2.0)
    return copy


class ReconstructionJob:
    """A reconstruction of magnitude and phase nodes, run off the server thread.

    Parameters
    ----------
    magnitude, phase : list of vtkMRMLScalarVolumeNode
        The echoes in the app's scene; copied here, on the calling thread.
    settings : dict
        Keyword arguments of ``ReconstructionLogic.process`` (``te_s``,
        ``b0_t``, ``preset``, ``unwrap``, ``bgremove``, ``inversion``,
        ``reference``, ...).
    """

    def __init__(self, magnitude, phase, settings):
        import slicer

        self.scene = slicer.vtkMRMLScene()
        self.magnitude = [copy_volume(node, self.scene) for node in magnitude]
        self.phase = [copy_volume(node, self.scene) for node in phase]
        self.settings = dict(settings)
        self.cancel_event = threading.Event()
        self.outputs = None
        self.error = None
        self.cancelled = False
        self.thread = None

    def cancel(self):
        """Ask the run to stop: the next progress report raises :class:`qsmlib.errors.Cancelled`."""
        self.cancel_event.set()

    def start(self, report, finished):
        """Run the Logic in a worker thread.

        ``report(text, percent)`` is called from the worker at each progress
        step; ``finished(job)`` once at the end, from the worker too. Neither
        may touch the app's scene: they hand over to the server thread.
        """
        from qsmslicer.progress import ProgressAdapter

        adapter = ProgressAdapter(report=report, is_cancelled=self.cancel_event.is_set)
        self.thread = threading.Thread(target=self._work, args=(adapter, finished), name="qsm-web-run", daemon=True)
        self.thread.start()

    def _work(self, adapter, finished):
        from qsmslicer.reconstruction import ReconstructionLogic

        try:
            self.outputs = ReconstructionLogic().process(self.magnitude, self.phase, progress=adapter, **self.settings)
        except Cancelled:
            self.cancelled = True
        except Exception as exc:  # shown in the app's status line; the server goes on
            self.error = exc
        finally:
            finished(self)

    def copy_outputs(self, scene):
        """The output volumes copied into ``scene`` (call on the thread that owns it): name -> node."""
        copies = {}
        for name in OUTPUT_NODES:
            node = getattr(self.outputs, name, None)
            if node is not None:
                copies[name] = copy_volume(node, scene)
        return copies

    def release(self):
        """Free the private scene."""
        self.scene.Clear(1)
