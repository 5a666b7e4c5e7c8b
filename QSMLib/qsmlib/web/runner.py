"""Runs of the web app: a shared Logic called in a worker thread, on a private scene.

MRML and VTK rendering are not thread-safe, and the app's scene is rendered
by the server thread for the browser. So a run never touches that scene from
another thread:

1. :class:`LogicJob` (built on the server thread) copies the input nodes into
   a private ``vtkMRMLScene`` (the copies share the voxels, which the Logic
   only reads);
2. :meth:`LogicJob.start` calls the Logic (the Slicer module's, nothing
   re-implemented here: ``ReconstructionLogic().process`` for
   :func:`reconstruction_job`, ``SwiLogic().process`` for :func:`swi_job`)
   on those copies in a worker thread; progress and the end are reported
   through callbacks that the app hands on to its event loop;
3. :meth:`LogicJob.copy_outputs` (back on the server thread) copies the output
   nodes, their display settings and attributes into the app's scene.
"""

import threading

from ..errors import Cancelled, QSMInputError

#: Outputs of a reconstruction, in the order they are copied (attributes of ReconstructionOutputs).
OUTPUT_NODES = ("susceptibility", "local_field", "total_field", "mask")
#: Outputs of an SWI run (attributes of SWIOutputs).
SWI_OUTPUT_NODES = ("swi", "mip")


def copy_volume(node, scene):
    """A copy of a volume node (geometry, attributes, diverging display) added to ``scene``, sharing its voxels.

    The copy observes the same ``vtkImageData`` as ``node`` (reference counted,
    so it outlives the node's removal from its scene): no voxel is copied, so
    a run holds its inputs once. Nothing in the app writes into an input's or
    an output's voxels after the copy. The display follows the
    source's: a diverging colour map keeps its window (set by
    :mod:`qsmslicer.display` in the Logic); other volumes get the default
    display of their class.
    """
    from qsmslicer import display

    copy = scene.AddNewNodeByClass(node.GetClassName(), scene.GenerateUniqueName(node.GetName()))
    copy.CopyOrientation(node)
    copy.SetAndObserveImageData(node.GetImageData())
    copy.CreateDefaultDisplayNodes()
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


def copy_echoes(volumes, scene):
    """Copies of echo volumes in ``scene`` (:func:`copy_volume`); an EchoSeries stays one, with the same array."""
    from qsmslicer.nodes import EchoSeries

    copies = [copy_volume(node, scene) for node in volumes]
    return volumes.with_nodes(copies) if isinstance(volumes, EchoSeries) else copies


class LogicJob:
    """One call of a shared Logic on copies of the app's nodes, run off the server thread.

    Parameters
    ----------
    logic_call : callable
        Called in the worker as ``logic_call(**copies, **settings)``, plus
        ``progress=`` (a :class:`qsmslicer.progress.ProgressAdapter`) when
        ``takes_progress``; returns an object whose attributes
        ``output_names`` are output nodes (or None).
    volumes : dict
        Keyword of ``logic_call`` -> a volume node, or a list of them (or an
        EchoSeries), in the app's scene; copied here, on the calling thread,
        into the job's private scene (:func:`copy_volume`, :func:`copy_echoes`).
    settings : dict
        The other keyword arguments of ``logic_call``.
    output_names : sequence of str
        The result's attributes that :meth:`copy_outputs` copies back.
    takes_progress : bool
        Whether ``logic_call`` reports progress (and so can be cancelled
        part-way); otherwise Cancel only stops a job that has not started.
    """

    def __init__(self, logic_call, volumes, settings, output_names, *, takes_progress=True):
        import slicer

        self.scene = slicer.vtkMRMLScene()
        self.logic_call = logic_call
        self.inputs = {key: copy_echoes(given, self.scene) if isinstance(given, list)
                       else copy_volume(given, self.scene) for key, given in volumes.items()}
        self.settings = dict(settings)
        self.output_names = tuple(output_names)
        self.takes_progress = takes_progress
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
        try:
            if self.cancel_event.is_set():
                raise Cancelled("cancelled before the start")
            extra = {"progress": adapter} if self.takes_progress else {}
            self.outputs = self.logic_call(**self.inputs, **self.settings, **extra)
        except Cancelled:
            self.cancelled = True
        except Exception as exc:  # shown in the app's status line; the server goes on
            self.error = exc
        finally:
            finished(self)

    def error_text(self):
        """The run's error for a status line: "Bad input: ..." for bad input, else "Error (its type): ..."."""
        kind = "Bad input" if isinstance(self.error, QSMInputError) else f"Error ({type(self.error).__name__})"
        return f"{kind}: {self.error}"

    def copy_outputs(self, scene):
        """The output volumes copied into ``scene`` (call on the thread that owns it): name -> node."""
        copies = {}
        for name in self.output_names:
            node = getattr(self.outputs, name, None)
            if node is not None:
                copies[name] = copy_volume(node, scene)
        return copies

    def release(self):
        """Free the private scene."""
        self.scene.Clear(1)


def reconstruction_job(magnitude, phase, settings, mask=None):
    """A :class:`LogicJob` of ``ReconstructionLogic().process`` (the QSM Reconstruction module's Logic).

    ``settings``: its keyword arguments (``te_s``, ``b0_t``, ``preset``,
    ``unwrap``, ``bgremove``, ``inversion``, ``reference``, ``threads``, ...);
    ``mask``: a labelmap node of the brain mask, or None for the automatic one.
    """
    from qsmslicer.reconstruction import ReconstructionLogic

    volumes = {"magnitude": magnitude, "phase": phase}
    if mask is not None:
        volumes["mask"] = mask
    return LogicJob(ReconstructionLogic().process, volumes, settings, OUTPUT_NODES)


def swi_job(magnitude, phase, settings):
    """A :class:`LogicJob` of ``SwiLogic().process`` (the SWI module's Logic): outputs ``swi`` and ``mip``.

    ``settings``: its keyword arguments (``te_s``, ``kind``, ``power``,
    ``slab_mm``, ...). The Logic reports no progress: Cancel stops it only
    before it starts (it takes seconds).
    """
    from qsmslicer.swi import SwiLogic

    return LogicJob(SwiLogic().process, {"magnitude": magnitude, "phase": phase}, settings, SWI_OUTPUT_NODES,
                    takes_progress=False)
