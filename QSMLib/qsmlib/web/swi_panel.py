"""SWI and its minimum intensity projection in the browser, and the choice of the map the views show.

The run is the SWI module's Logic (``qsmslicer.swi.SwiLogic().process``) on
copies of the loaded echoes, in a worker thread (:func:`qsmlib.web.runner.swi_job`,
the same job class as the reconstruction); its two volumes are copied back into
the app's scene, offered as NIfTI downloads, and shown in the slice views
through the *Shown in the views* selector: the magnitude; after a reconstruction
the susceptibility over the magnitude, the local and the total field (alone, with
the diverging display that ``qsmslicer.display.show_field`` set in the Logic and
the runner's copies keep) and the mask (a labelmap in the slice views' label
layer, coloured over the magnitude as Slicer shows one); after SWI the SWI and mIP.
"""

import asyncio
import time

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from .. import swi as qsm_swi
from ..errors import QSMInputError
from ..validation import check_number
from . import inputs
from .runner import swi_job
from .downloads import download_button, nifti_bytes

#: Downloads of the SWI run: output -> file name.
SWI_DOWNLOADS = {"swi": "swi.nii.gz", "mip": "mip.nii.gz"}
#: The maps the views can show: key -> label.
SHOWN_LABELS = {"magnitude": "Magnitude (echo 1)", "susceptibility": "Susceptibility over the magnitude",
                "local_field": "Local field (Hz)", "total_field": "Total field (Hz)",
                "mask": "Brain mask over the magnitude", "swi": "SWI",
                "mip": "SWI minimum intensity projection (mIP)"}
#: Maps of a reconstruction shown alone in the slice views (their display is the Logic's).
FIELD_MAPS = ("local_field", "total_field")
#: Opacity of the mask's label layer over the magnitude (the magnitude stays readable under it).
MASK_OPACITY = 0.5
#: The SWI settings the page sends with the click (state names), as the SWI module's parameters.
SWI_FIELDS = ("te_text", "swi_kind", "swi_power", "swi_filter_size", "swi_slab_mm", "swi_flip")


class SwiPanel:
    """The SWI part of the side panel and the selector of the map shown in the slice views.

    Parameters
    ----------
    app : qsmlib.web.app.QSMWebApp
        Gives the loaded echoes (``app.magnitude``, ``app.phase``), the
        panel's echo times, the scene and the views.
    """

    def __init__(self, app):
        self.app = app
        self.job = None
        self.loop = None
        self.outputs = {}
        self.source = None  # the magnitude nodes the outputs were computed from
        self.started = 0.0
        state = app.state
        state.swi_running = False
        state.swi_ready = False
        state.swi_status = ""
        state.swi_status_type = "info"
        state.swi_kinds = list(qsm_swi.PHASE_MASKS)
        state.swi_kind = "negative"
        state.swi_power = "4"
        state.swi_filter_size = str(qsm_swi.DEFAULT_FILTER_SIZE)
        state.swi_slab_mm = f"{qsm_swi.DEFAULT_SLAB_MM:g}"
        state.swi_flip = False
        state.shown_map = "magnitude"
        state.shown_caption = ""
        state.change("shown_map")(self.show_map)
        state.change("has_result", "running")(self._on_result)

    @property
    def state(self):
        return self.app.state

    def reset(self):
        """Forget the SWI volumes (new inputs replaced the echoes they came from)."""
        for node in self.outputs.values():
            self.app.scene.RemoveNode(node)
        self.outputs, self.source = {}, None
        self.state.swi_ready = False
        self.state.swi_status = ""
        self.state.shown_map = "magnitude"
        self.state.shown_caption = ""

    # -- the run --------------------------------------------------------------------------------

    def run(self, *values):
        """Start SWI and mIP on the loaded echoes with the panel's settings (a worker thread).

        The page sends the values it shows (:data:`SWI_FIELDS`) with the
        click. The settings are the SWI module's: phase mask kind, its power,
        the high-pass filter size (k-space samples), the mIP slab (mm) and the
        phase sign; qsmlib checks their ranges.
        """
        app, state = self.app, self.state
        if state.running or state.swi_running:
            return
        if values:
            state.update(dict(zip(SWI_FIELDS, values)))
        if not app.magnitude:
            self._status("No input: load the sample head, files, a BIDS subject or a DICOM folder first.", "error")
            return
        try:
            settings = {"te_s": inputs.parse_echo_times(state.te_text, len(app.magnitude)),
                        "kind": state.swi_kind,
                        "power": check_number(state.swi_power, "SWI power"),
                        "filter_size": inputs.parse_whole_number(state.swi_filter_size, "SWI high-pass filter size",
                                                                 qsm_swi.DEFAULT_FILTER_SIZE),
                        "slab_mm": check_number(state.swi_slab_mm, "mIP slab", unit=" mm"),
                        "phase_sign": -1 if state.swi_flip else 1}
        except QSMInputError as exc:
            self._status(str(exc), "error")
            return
        self.loop = asyncio.get_event_loop()
        self.source = list(app.magnitude)
        self.job = swi_job(app.magnitude, app.phase, settings)
        self.started = time.monotonic()
        state.swi_running = True
        self._status("Computing SWI and mIP...", "info")
        self.job.start(lambda _text, _percent: None, self._finished_from_worker)

    def _finished_from_worker(self, job):
        self.loop.call_soon_threadsafe(self._finish, job)

    def _finish(self, job):
        with self.state:
            self.state.swi_running = False
            self.job = None
            try:
                if job.error is not None:
                    self._status(f"SWI: {job.error_text()}", "error")
                elif job.cancelled or self.source != list(self.app.magnitude):
                    self._status("SWI: the inputs changed during the run; run it again.", "warning")
                else:
                    self._show_outputs(job)
            finally:
                job.release()

    def _show_outputs(self, job):
        for node in self.outputs.values():
            self.app.scene.RemoveNode(node)
        self.outputs = job.copy_outputs(self.app.scene)
        self.state.swi_ready = True
        self.state.shown_map = "swi"
        self.show_map("swi")
        seconds = time.monotonic() - self.started
        self._status(f"SWI and mIP ready ({len(self.source)} echoes, {seconds:.1f} s); the views show the SWI.",
                     "success")

    def _status(self, text, kind):
        self.state.swi_status = text
        self.state.swi_status_type = kind

    # -- the views ------------------------------------------------------------------------------

    def _available(self):
        available = ["magnitude"] if self.app.magnitude else []
        available += [key for key in ("susceptibility",) + FIELD_MAPS + ("mask",) if key in self.app.outputs]
        if self.outputs and self.source == list(self.app.magnitude):
            available += list(SWI_DOWNLOADS)
        return available

    def _on_result(self, has_result=False, running=False, **_):
        # a reconstruction ended with a map, which the app shows, or the map is gone: the selector follows
        if has_result and not running and self.state.stage == "Done":
            self.state.shown_map = "susceptibility"
        elif not has_result and self.state.shown_map == "susceptibility":
            self.state.shown_map = "magnitude"

    def show_map(self, shown_map, **_):
        """Show the chosen map: a field, SWI or mIP alone; the susceptibility or the mask over the magnitude."""
        app = self.app
        if shown_map not in self._available():
            return
        display = app.slicer_app.display_manager
        show_label_layer(app.scene, app.outputs["mask"] if shown_map == "mask" else None)
        if shown_map in SWI_DOWNLOADS or shown_map in FIELD_MAPS:
            display.show_volume_in_slice_background((self.outputs if shown_map in SWI_DOWNLOADS
                                                     else app.outputs)[shown_map])
            display.show_volume_in_slice_foreground(None)
        else:
            display.show_volume_in_slice_background(app.magnitude[0])
            display.show_volume_in_slice_foreground(app.outputs["susceptibility"] if shown_map == "susceptibility"
                                                    else None)
            if shown_map == "susceptibility":
                for view in app.slicer_app.view_manager.get_slice_views():
                    view.set_foreground_opacity(0.8)
        self.state.shown_caption = self.caption(shown_map)

    def caption(self, shown_map):
        """What the views show, with the window of a diverging map as its display node holds it."""
        node = (self.outputs if shown_map in SWI_DOWNLOADS else self.app.outputs).get(shown_map)
        display_node = node.GetDisplayNode() if node is not None else None
        half = display_node.GetWindow() / 2.0 if display_node is not None and shown_map != "mask" else None
        if shown_map == "susceptibility":
            return f"Susceptibility over the magnitude, -{half:.4g} to +{half:.4g} ppm, blue to red (opacity 0.8)."
        if shown_map in FIELD_MAPS:
            name = "Local field" if shown_map == "local_field" else "Total field"
            return (f"{name}, -{half:.4g} to +{half:.4g} Hz, blue to red (the window is the "
                    "99th percentile of |field| in the mask).")
        if shown_map == "mask":
            return f"Brain mask (labelmap) at opacity {MASK_OPACITY:g} over the magnitude."
        return f"{SHOWN_LABELS[shown_map]}, grey."

    # -- downloads ------------------------------------------------------------------------------

    def download(self, key):
        """The bytes of the SWI or mIP volume as a NIfTI file (.nii.gz), written through qsmlib.io."""
        from qsmslicer import nodes

        node = self.outputs.get(key)
        if node is None or key not in SWI_DOWNLOADS:
            return None
        return nifti_bytes(SWI_DOWNLOADS[key], nodes.array_from_volume(node), nodes.ijk_to_ras(node), "float32")

    # -- the page -------------------------------------------------------------------------------

    def build(self):
        """The view selector, the SWI button, its status line and downloads."""
        trigger = self.app.server.controller.trigger_name
        # the choices follow the state's flags on the page: the magnitude, then the maps made from it
        choices = ", ".join(f"({flag} ? [{{value: '{key}', title: '{SHOWN_LABELS[key]}'}}] : [])"
                            for key, flag in (("magnitude", "true"), ("susceptibility", "has_result"),
                                              ("local_field", "has_result"), ("total_field", "has_result"),
                                              ("mask", "has_result"), ("swi", "swi_ready"), ("mip", "swi_ready")))
        v3.VSelect(label="Shown in the views", id="qsm-shown-map", v_model=("shown_map",),
                   items=(f"[].concat({choices})",), density="compact", hide_details=True, classes="my-2",
                   v_if=("inputs_loaded",))
        html.Div("{{ shown_caption }}", id="qsm-shown-caption", classes="text-caption", v_if=("inputs_loaded",))
        html.Div("SWI", classes="text-h6 mt-2")
        v3.VSelect(label="Phase mask", id="qsm-swi-kind", v_model=("swi_kind",), items=("swi_kinds",),
                   density="compact", hide_details=True, classes="my-2")
        with html.Div(classes="d-flex"):
            for key, label in (("swi_power", "Power"), ("swi_filter_size", "Filter size (samples)"),
                               ("swi_slab_mm", "mIP slab (mm)")):
                v3.VTextField(label=label, id=f"qsm-{key.replace('_', '-')}", v_model=(key,), density="compact",
                              hide_details=True, classes="mr-2")
        v3.VCheckbox(label="Flip the phase sign", id="qsm-swi-flip", v_model=("swi_flip",), density="compact",
                     hide_details=True)
        v3.VBtn("Compute SWI and mIP", id="qsm-swi-run", block=True, classes="my-2",
                click=(self.run, f"[{', '.join(SWI_FIELDS)}]"),
                disabled=("running || swi_running || !inputs_loaded",), loading=("swi_running",))
        v3.VAlert(text=("swi_status",), type=("swi_status_type",), id="qsm-swi-status", density="compact",
                  variant="tonal", classes="my-2", v_if=("swi_status",),
                  style="white-space: pre-wrap; word-break: break-word;")
        with html.Div(v_if=("swi_ready",), classes="d-flex flex-wrap"):
            download = trigger(self.download)
            for key, file_name in SWI_DOWNLOADS.items():
                download_button(file_name, f"qsm-download-{key}", download, "application/gzip", key)


def show_label_layer(scene, labelmap, opacity=MASK_OPACITY):
    """``labelmap`` (or nothing) in the label layer of every slice view, filled at ``opacity``.

    trame-slicer's views set only the background and foreground layers; the
    label layer is set on the views' slice composite nodes, as Slicer's
    ``slicer.util.setSliceViewerLayers(label=...)`` does.
    """
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetLabelVolumeID(labelmap.GetID() if labelmap is not None else None)
        if labelmap is not None:
            composite.SetLabelOpacity(opacity)
