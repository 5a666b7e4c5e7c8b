"""Progress and cancellation between qsmlib and a Slicer progress dialog."""

from qsmlib.errors import Cancelled

#: Share of the whole run that each pipeline stage takes (roughly its time on a 1 mm head).
STAGE_WEIGHTS = (("mask", 0.05), ("total field", 0.30), ("background removal", 0.20),
                 ("dipole inversion", 0.40), ("referencing", 0.05))
#: A reconstruction followed by chi-separation (about half the reconstruction's time on a 1 mm head).
SEPARATION_STAGE_WEIGHTS = STAGE_WEIGHTS + (("chi-separation", 0.5),)
#: The same for an atlas registration (qsmlib.atlas.registration.STAGES; roughly their time on a 2 mm head).
ATLAS_STAGE_WEIGHTS = (("atlas rigid", 0.15), ("atlas affine", 0.15), ("atlas deformable", 0.65),
                       ("atlas labels", 0.05))


class ProgressAdapter:
    """Turn qsmlib's ``progress(stage, fraction)`` into an overall percentage.

    Parameters
    ----------
    report : callable(text, percent), optional
        Shows progress, for example ``QProgressDialog.setLabelText`` and
        ``setValue``. ``percent`` is an int from 0 to 100 that never goes back.
    is_cancelled : callable() -> bool, optional
        Polled at every report, for example ``QProgressDialog.wasCanceled``.
        When it returns True (or after :meth:`cancel`), the next report raises
        :class:`qsmlib.Cancelled`, which stops the run.
    """

    def __init__(self, report=None, is_cancelled=None, weights=STAGE_WEIGHTS):
        self.report = report
        self.is_cancelled = is_cancelled
        self.weights = dict(weights)
        self.starts = {}
        total = 0.0
        for stage, weight in weights:
            self.starts[stage] = total
            total += weight
        self.total = total
        self.percent = 0
        self.cancel_requested = False

    def cancel(self):
        self.cancel_requested = True

    def __call__(self, stage, fraction):
        if self.cancel_requested or (self.is_cancelled is not None and self.is_cancelled()):
            self.cancel_requested = True
            raise Cancelled(f"cancelled during {stage}")
        if stage in self.starts:
            done = (self.starts[stage] + self.weights[stage] * float(fraction)) / self.total
            self.percent = max(self.percent, int(round(100 * done)))
        if self.report is not None:
            self.report(f"{stage[:1].upper()}{stage[1:]}...", self.percent)


def run_with_progress_dialog(work, *, title, create_dialog, process_events=None, weights=STAGE_WEIGHTS):
    """Run ``work(progress)`` while a progress dialog with a Cancel button shows how far it got.

    Parameters
    ----------
    work : callable(ProgressAdapter)
        The run, for example a Logic's ``processParameterNode`` with its
        ``progress`` argument bound to the adapter.
    title : str
        Window title of the dialog.
    create_dialog : callable(**kwargs) -> QProgressDialog-like
        In Slicer ``slicer.util.createProgressDialog``; called with
        ``windowTitle``, ``labelText``, ``maximum`` and ``value``.
    process_events : callable(), optional
        In Slicer ``slicer.app.processEvents``: keeps the dialog painted and
        its Cancel button clickable between solver iterations.
    weights : sequence of (stage, weight)
        The stages of ``work`` and their shares (:data:`STAGE_WEIGHTS` for a
        reconstruction, :data:`ATLAS_STAGE_WEIGHTS` for an atlas registration).

    Returns
    -------
    (result, cancelled) : (object, bool)
        ``work``'s result and False, or None and True when the user cancelled.
    """
    dialog = create_dialog(windowTitle=title, labelText=title, maximum=100, value=0)

    def report(text, percent):
        dialog.labelText = text
        dialog.value = percent
        if process_events is not None:
            process_events()

    adapter = ProgressAdapter(report=report, is_cancelled=lambda: dialog.wasCanceled, weights=weights)
    try:
        return work(adapter), False
    except Cancelled:
        return None, True
    finally:
        dialog.close()
