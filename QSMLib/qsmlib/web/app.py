"""The browser app: Slicer's slice and 3D views (trame-slicer) and a QSM Reconstruction panel.

Layout: a side panel (Data, Reconstruction, Results) and four linked views,
red (axial), yellow (sagittal), green (coronal) and 3D, rendered by Slicer's
own MRML displayable managers on the server and streamed to the browser.

Everything the panel does goes through code the Slicer modules share:

- the sample head: ``ReconstructionLogic.addSimulatedHead``;
- NIfTI files: :mod:`qsmlib.io` readers, :mod:`qsmslicer.nodes` to nodes;
- BIDS subjects and DICOM folders: ``qsm run``'s readers (:mod:`qsmlib.web.data_panel`);
- the run: ``ReconstructionLogic.process`` via :mod:`qsmlib.web.runner`;
- SWI and mIP: ``qsmslicer.swi.SwiLogic`` via the same runner (:mod:`qsmlib.web.swi_panel`);
- the display of the maps: :mod:`qsmslicer.display` (set by the Logic);
- ROI Susceptibility: ``qsmslicer.roi.RoiLogic`` (:mod:`qsmlib.web.roi_panel`).

The panel's widgets carry ``id`` attributes (``qsm-...``) for the browser tests.
"""

import asyncio
import json

import numpy as np
from trame.app import get_server
from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3

from ..errors import ImplausibleMaskError, QSMInputError
from ..pipeline import BGREMOVE_METHODS, INVERSION_METHODS, PRESETS, UNWRAP_METHODS
from . import inputs
from .data_panel import DataSourcesPanel
from .roi_panel import RoiPanel
from .runner import reconstruction_job
from .swi_panel import SwiPanel
from .downloads import download_button, nifti_bytes

#: References the browser offers ("region" needs a segmentation, which the web app cannot make yet).
WEB_REFERENCES = ("brain", "csf", "none")
#: Downloadable maps: key -> (output node, file name).
DOWNLOADS = {"chi": ("susceptibility", "chi.nii.gz"), "local_field": ("local_field", "local_field.nii.gz"),
             "total_field": ("total_field", "total_field.nii.gz"), "mask": ("mask", "mask.nii.gz")}
#: Voxel size (mm) of the sample head the app loads (the Slicer module's default sample).
SAMPLE_VOXEL_SIZE_MM = 2.0


class QSMWebApp:
    """The trame server, the Slicer application core, and the QSM panel.

    Parameters
    ----------
    data_folder : qsmlib.web.data_folder.DataFolder
        The only folder whose files the browser can open.
    server : trame Server or str, optional
        Default: a new server of its own.
    threads : int, optional
        Computing threads of each run (the Logic's ``threads``); default: the
        count Slicer's ITK uses, as in the Slicer module.
    """

    def __init__(self, data_folder, server=None, threads=None):
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        self.data_folder = data_folder
        self.threads = threads
        self.server = get_server(server or "qsm-web", client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=_slice_view_ui,
                               three_d_view_ui_f=_view_ui)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        views = Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.threed_view()]),
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.sagittal_view(),
                                              ViewLayoutDefinition.coronal_view()]),
        ])
        self.layout_manager.register_layout("qsm", views)
        self.layout_manager.set_layout("qsm")

        self.magnitude = []
        self.phase = []
        self.outputs = {}
        self.provenance = None
        self.job = None
        self.refused_settings = None  # the settings of a run refused for its brain mask
        self.mask_node = None  # the brain mask file of the last run, as a labelmap
        self.loop = None
        self._init_state()
        self.roi = RoiPanel(self)
        self.sources, self.swi = DataSourcesPanel(self), SwiPanel(self)
        self._build_ui()

    @property
    def state(self):
        return self.server.state

    # -- state ----------------------------------------------------------------------------------

    def _init_state(self):
        state = self.state
        state.trame__title = "QSM"
        state.files = self.data_folder.nifti_files()
        state.data_root = str(self.data_folder.root)
        state.magnitude_name = ""
        state.phase_name = ""
        state.mask_name = ""
        state.te_text = ""
        state.b0_text = ""
        state.inputs_text = "No input loaded."
        state.inputs_loaded = False
        state.preset = "consensus"
        state.presets = list(PRESETS)
        state.unwrap_methods = sorted(UNWRAP_METHODS)
        state.bgremove_methods = sorted(BGREMOVE_METHODS)
        state.inversion_methods = sorted(INVERSION_METHODS)
        state.references = list(WEB_REFERENCES)
        state.reference = "brain"
        state.update(PRESETS["consensus"])
        state.running = False
        state.progress = 0
        state.stage = ""
        state.status_text = "Load the sample head or choose magnitude and phase files."
        state.status_type = "info"
        state.warnings = []
        state.has_result = False
        state.mask_refused = False
        state.change("preset")(self._on_preset)
        self.server.controller.on_client_connected.add(self.refresh_files)

    def _set_status(self, text, kind="info"):
        self.state.status_text = text
        self.state.status_type = kind

    def _on_preset(self, preset, **_):
        if preset in PRESETS:
            self.state.update(PRESETS[preset])

    # -- data -----------------------------------------------------------------------------------

    def refresh_files(self, *_args):
        """Read the data folder's file list again (when a page connects, and when a file box gets the focus)."""
        files = self.data_folder.nifti_files()
        if files != self.state.files:  # an unchanged list is not sent (it would re-render the boxes)
            with self.state:
                self.state.files = files

    def _clear_scene_inputs(self):
        self.roi.reset()
        self.swi.reset()
        for node in self.magnitude + self.phase + list(self.outputs.values()) + [self.mask_node]:
            if node is not None:
                self.scene.RemoveNode(node)
        self.mask_node = None
        self.magnitude, self.phase, self.outputs, self.provenance = [], [], {}, None
        self.state.has_result = False
        self.state.mask_refused = False
        self.state.warnings = []

    def load_sample(self):
        """Simulate the sample head (the Slicer module's sample) into the app's scene."""
        from qsmslicer.reconstruction import ReconstructionLogic

        if self.state.running:
            return
        self._clear_scene_inputs()
        self.magnitude, self.phase, head = ReconstructionLogic().addSimulatedHead(
            scene=self.scene, voxel_size_mm=SAMPLE_VOXEL_SIZE_MM)
        self.state.te_text = ", ".join(f"{t:g}" for t in head.te_s)
        self.state.b0_text = f"{float(head.b0_t):g}"
        self._inputs_ready(f"Simulated head, {SAMPLE_VOXEL_SIZE_MM:g} mm, {len(self.magnitude)} echoes "
                           "(echo times and field strength of the simulation).")

    def load_files(self, magnitude_name=None, phase_name=None):
        """Load the magnitude and phase files named in the panel (inside the data folder only).

        The page sends the names it shows with the click, so a name typed just
        before the click is the one loaded.
        """
        if self.state.running:
            return
        if magnitude_name is not None:
            self.state.magnitude_name = magnitude_name
        if phase_name is not None:
            self.state.phase_name = phase_name
        try:
            magnitude_path = self.data_folder.resolve(self.state.magnitude_name)
            phase_path = self.data_folder.resolve(self.state.phase_name)
            scratch = _scratch_scene()
            magnitude, affine = inputs.load_echo_nodes(scratch, magnitude_path, "mag", "Magnitude")
            phase, phase_affine = inputs.load_echo_nodes(scratch, phase_path, "phase", "Phase")
            if len(magnitude) != len(phase):
                raise QSMInputError(f"{self.state.magnitude_name} has {len(magnitude)} echoes but "
                                    f"{self.state.phase_name} has {len(phase)}; choose the phase of the same scan")
            te, b0, note = inputs.sidecar_acquisition(magnitude_path, len(magnitude))
        except QSMInputError as exc:
            self._set_status(str(exc), "error")
            return
        from .runner import copy_echoes

        self._clear_scene_inputs()
        self.magnitude = copy_echoes(magnitude, self.scene)
        self.phase = copy_echoes(phase, self.scene)
        scratch.Clear(1)
        if te is not None:
            self.state.te_text = ", ".join(f"{t:g}" for t in te)
        if b0 is not None:
            self.state.b0_text = f"{b0:g}"
        self._inputs_ready(f"{self.state.magnitude_name} and {self.state.phase_name}, {len(magnitude)} echoes; "
                           f"{note}.")

    def _inputs_ready(self, text):
        self.state.inputs_loaded = True
        self.state.inputs_text = text
        self._set_status("Inputs loaded: check the echo times and field strength, then Run.", "info")
        shown = self.magnitude[0]
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(shown)
        display.show_volume_in_slice_foreground(None)
        self.state.shown_caption = self.swi.caption("magnitude")
        # the three slice planes in the 3D view, as Slicer's "visible in 3D" eye of each slice view shows them
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_visible_in_3d(True)
        display.reset_views()
        for view in self.slicer_app.view_manager.get_threed_views():
            _turn_to_see_three_planes(view)

    # -- the run --------------------------------------------------------------------------------

    #: Panel values a Run click sends along, so that a value typed just before the click is the one used;
    #: and the preset. Not the method selectors: the server sets them when the preset changes, and the
    #: page may still show the previous preset's methods when Run is clicked right after a preset.
    RUN_FIELDS = ("te_text", "b0_text", "preset", "mask_name")

    def run(self, *values):
        """Start the reconstruction with the panel's settings (a worker thread; Cancel stays live)."""
        if self.state.running:
            return
        if values:
            sent = dict(zip(self.RUN_FIELDS, values))
            if sent["preset"] != self.state.preset:
                self._on_preset(sent["preset"])  # the preset's change has not reached the server yet
            self.state.update(sent)
        if not self.magnitude:
            self._set_status("No input: load the sample head or magnitude and phase files first.", "error")
            return
        try:
            settings = {"te_s": inputs.parse_echo_times(self.state.te_text, len(self.magnitude)),
                        "b0_t": inputs.parse_field_strength(self.state.b0_text),
                        "preset": self.state.preset, "unwrap": self.state.unwrap,
                        "bgremove": self.state.bgremove, "inversion": self.state.inversion,
                        "reference": self.state.reference, "threads": self.threads}
            self._load_mask()
        except QSMInputError as exc:
            self._set_status(str(exc), "error")
            return
        self._start(settings)

    def _load_mask(self):
        """Load the brain mask file named in the panel into ``mask_node`` (a labelmap; None when no file is named).

        Read by ``qsm run --mask``'s reader: it must lie on the magnitude's
        voxel grid (shape and affine). Without it the run makes its automatic mask.
        """
        from qsmslicer import nodes

        if self.mask_node is not None:
            self.scene.RemoveNode(self.mask_node)
            self.mask_node = None
        name = (self.state.mask_name or "").strip()
        if not name:
            return
        reference = self.magnitude[0]
        affine = nodes.ijk_to_ras(reference)
        mask = inputs.load_mask_file(self.data_folder, name, nodes.dimensions(reference), affine)
        self.mask_node = nodes.output_volume(self.scene, name, mask.astype(np.uint8), affine,
                                             class_name="vtkMRMLLabelMapVolumeNode")

    def run_accepting_mask(self):
        """Run again what was refused for an implausible brain mask (automatic or given), with that mask.

        As the Slicer module's "Use this mask anyway": the plausibility
        warnings go into the map's provenance and the status line.
        """
        if self.state.running or not self.state.mask_refused or self.refused_settings is None:
            return
        self._start({**self.refused_settings, "accept_implausible_mask": True})

    def _start(self, settings):
        self.loop = asyncio.get_event_loop()
        self.job = reconstruction_job(self.magnitude, self.phase, settings, mask=self.mask_node)
        self.refused_settings = None
        self.state.mask_refused = False
        self.state.running = True
        self.state.progress = 0
        self.state.stage = "Starting..."
        self.state.warnings = []
        self._set_status(f"Reconstructing ({settings['preset']} preset)...", "info")
        self.job.start(self._report_from_worker, self._finished_from_worker)

    def cancel(self):
        """Ask the running reconstruction to stop at its next progress step."""
        if self.job is not None and self.state.running:
            self.job.cancel()
            self._set_status("Cancelling...", "warning")

    def _report_from_worker(self, text, percent):
        # called in the worker: hand over to the server's event loop
        self.loop.call_soon_threadsafe(self._push_progress, text, percent)

    def _finished_from_worker(self, job):
        self.loop.call_soon_threadsafe(self._finish, job)

    def _push_progress(self, text, percent):
        with self.state:
            if self.state.running:
                self.state.stage = text
                self.state.progress = percent

    def _finish(self, job):
        with self.state:
            self.state.running = False
            self.job = None
            if job.cancelled:
                self.state.stage = ""
                self._set_status("Reconstruction cancelled; no map was made.", "warning")
            elif isinstance(job.error, ImplausibleMaskError):
                self.state.stage = ""
                self.refused_settings = job.settings
                self.state.mask_refused = True
                self._set_status(implausible_mask_text(job.error), "error")
            elif job.error is not None:
                self.state.stage = ""
                self._set_status(job.error_text(), "error")
            else:
                self._show_outputs(job)
            job.release()

    def _show_outputs(self, job):
        self.roi.reset()
        for node in self.outputs.values():
            self.scene.RemoveNode(node)
        self.outputs = job.copy_outputs(self.scene)
        self.provenance = job.outputs.provenance
        self.swi.show_map("susceptibility")
        warnings = list(self.provenance.get("warnings", []))
        self.state.warnings = warnings
        self.state.progress = 100
        self.state.stage = "Done"
        self.state.has_result = True
        config = self.provenance.get("config", {})
        methods = ", ".join(str(config.get(stage)) for stage in ("unwrap", "bgremove", "inversion"))
        seconds = float(self.provenance.get("total_time_s", 0.0))
        note = f"; {len(warnings)} warning(s) below" if warnings else ""
        self._set_status(f"Susceptibility map ready ({methods}; {seconds:.1f} s){note}.",
                         "warning" if warnings else "success")

    # -- downloads ------------------------------------------------------------------------------

    def download_map(self, key):
        """The bytes of one output as a NIfTI file (.nii.gz), written through qsmlib.io."""
        from qsmslicer import nodes

        node = self.outputs.get(DOWNLOADS[key][0])
        if node is None:
            return None
        array = nodes.array_from_volume(node)
        return nifti_bytes(DOWNLOADS[key][1], array, nodes.ijk_to_ras(node),
                           array.dtype if key == "mask" else "float32")

    def download_provenance(self):
        """The run's provenance as JSON text."""
        if self.provenance is None:
            return None
        return json.dumps(self.provenance, indent=2, default=str)

    # -- the page -------------------------------------------------------------------------------

    def _build_ui(self):
        ctrl = self.server.controller
        with VAppLayout(self.server, full_height=True) as self.ui:
            with v3.VAppBar(density="compact"):
                v3.VAppBarTitle("QSM: quantitative susceptibility mapping")
                v3.VSpacer()
                html.Div("data folder: {{ data_root }}", classes="text-caption mr-4")
            with v3.VNavigationDrawer(permanent=True, width=380):
                with v3.VContainer(classes="pa-3"):
                    self._data_panel(ctrl)
                    v3.VDivider(classes="my-3")
                    self._reconstruction_panel(ctrl)
                    v3.VDivider(classes="my-3")
                    self._results_panel()
                    self.swi.build()
                    v3.VDivider(classes="my-3", v_if=("has_result",))
                    self.roi.build()
            with v3.VMain():
                with html.Div(style="height: calc(100vh - 48px); display: flex;"):
                    self.layout_manager.initialize_layout_grid(self.ui)

    def _data_panel(self, ctrl):
        html.Div("Data", classes="text-h6")
        v3.VBtn("Load the simulated sample head", id="qsm-load-sample", block=True, classes="my-2",
                click=self.load_sample, disabled=("running",))
        v3.VCombobox(label="Magnitude (4D NIfTI, echoes last)", id="qsm-magnitude", v_model=("magnitude_name",),
                     items=("files",), density="compact", hide_details=True, classes="my-2",
                     update_focused=(self.refresh_files, "[$event]"))
        v3.VCombobox(label="Phase (4D NIfTI, echoes last)", id="qsm-phase", v_model=("phase_name",),
                     items=("files",), density="compact", hide_details=True, classes="my-2",
                     update_focused=(self.refresh_files, "[$event]"))
        v3.VBtn("Load files", id="qsm-load-files", block=True, click=(self.load_files, "[magnitude_name, phase_name]"),
                disabled=("running",))
        v3.VCombobox(label="Brain mask (3D NIfTI; empty: automatic)", id="qsm-mask", v_model=("mask_name",),
                     items=("files",), density="compact", hide_details=True, clearable=True, classes="my-2",
                     update_focused=(self.refresh_files, "[$event]"))
        self.sources.build()
        html.Div("{{ inputs_text }}", id="qsm-inputs", classes="text-caption my-2")
        v3.VTextField(label="Echo times (s)", id="qsm-te", v_model=("te_text",), density="compact",
                      hide_details=True, classes="my-2")
        v3.VTextField(label="Field strength (T)", id="qsm-b0", v_model=("b0_text",), density="compact",
                      hide_details=True, classes="my-2")

    def _reconstruction_panel(self, ctrl):
        html.Div("Reconstruction", classes="text-h6")
        with v3.VRadioGroup(v_model=("preset",), inline=True, label="Preset", id="qsm-preset", hide_details=True):
            for preset in PRESETS:
                v3.VRadio(label=preset, value=preset, id=f"qsm-preset-{preset}")
        for key, label in (("unwrap", "Phase unwrapping"), ("bgremove", "Background removal"),
                           ("inversion", "Dipole inversion")):
            v3.VSelect(label=label, id=f"qsm-{key}", v_model=(key,), items=(f"{key}_methods",), density="compact",
                       hide_details=True, classes="my-2")
        v3.VSelect(label="Reference", id="qsm-reference", v_model=("reference",), items=("references",),
                   density="compact", hide_details=True, classes="my-2")
        with html.Div(classes="d-flex my-2"):
            v3.VBtn("Run", id="qsm-run", color="primary", click=(self.run, f"[{', '.join(self.RUN_FIELDS)}]"),
                    disabled=("running || !inputs_loaded",), classes="mr-2")
            v3.VBtn("Cancel", id="qsm-cancel", click=self.cancel, disabled=("!running",), classes="mr-2")
            v3.VBtn("Use this mask anyway", id="qsm-run-anyway", v_if=("mask_refused && !running",),
                    color="warning", click=self.run_accepting_mask)
        v3.VProgressLinear(model_value=("progress",), id="qsm-progress", height=8, color="primary",
                           classes="my-2")
        html.Div("{{ stage }} {{ progress }} %", id="qsm-stage", classes="text-caption")
        v3.VAlert(text=("status_text",), type=("status_type",), id="qsm-status", density="compact",
                  variant="tonal", classes="my-2", style="white-space: pre-wrap; word-break: break-word;")
        with html.Ul(v_if=("warnings.length",), id="qsm-warnings", classes="text-caption"):
            html.Li("{{ w }}", v_for="w in warnings", key="w")

    def _results_panel(self):
        trigger = self.server.controller.trigger_name
        html.Div("Results", classes="text-h6")
        with html.Div(v_if=("has_result",), classes="d-flex flex-wrap"):
            map_trigger = trigger(self.download_map)
            for key, (_node, file_name) in DOWNLOADS.items():
                download_button(file_name, f"qsm-download-{key}", map_trigger, "application/gzip", key)
            download_button("provenance.json", "qsm-download-provenance", trigger(self.download_provenance),
                            "application/json")


def _view_ui(server, view_id, view):
    """trame-slicer's own controls of a view, and an element with id qsm-view-<Red|Yellow|Green|ThreeD>."""
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    html.Span(id=f"qsm-view-{view.get_singleton_tag()}", style="display: none;")
    create_vertical_view_gutter_ui(server, view_id, view)


def _slice_view_ui(server, view_id, view):
    """As :func:`_view_ui`, with trame-slicer's slice slider."""
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    html.Span(id=f"qsm-view-{view.get_singleton_tag()}", style="display: none;")
    create_vertical_slice_view_gutter_ui(server, view_id, view)


def _turn_to_see_three_planes(view, azimuth_deg=35.0, elevation_deg=25.0):
    """Turn the 3D view's camera from the front (where the axial and sagittal planes are edge-on) obliquely."""
    camera_node = view.get_camera_node()
    if camera_node is None:
        return
    camera = camera_node.GetCamera()
    camera.Azimuth(azimuth_deg)
    camera.Elevation(elevation_deg)
    camera.OrthogonalizeViewUp()
    camera_node.ResetClippingRange()
    view.schedule_render()


def _scratch_scene():
    """A scene for checking files before they replace the app's inputs."""
    import slicer

    return slicer.vtkMRMLScene()


def implausible_mask_text(refusal):
    """The status line for a run refused because its brain mask (automatic or given) looks implausible."""
    check = refusal.check or {}
    problems = "\n".join(f"- {problem}" for problem in check.get("implausible", [])) or str(refusal)
    if check.get("source") == "given":
        source, fix = "The brain mask file", "choose the brain mask of this scan"
    else:
        source, fix = "The automatic brain mask", "choose a brain mask file (Brain mask) and Run again"
    return (f"{source} looks implausible:\n{problems}\nNo map was made. Use this mask anyway (the warnings "
            f"are kept in the map's provenance), or {fix}.")
