"""BIDS subjects and DICOM folders of the data folder in the browser's Data panel.

The folders are offered from what ``--data`` holds (BIDS datasets: folders
with ``sub-*`` folders; then their subjects and sessions), checked by
:meth:`DataFolder.resolve_folder` (nothing outside ``--data``, links
included), and read by ``qsm run``'s readers (:mod:`qsmlib.web.inputs`). The
echo times and field strength they carry fill the panel's fields, which stay
editable; the inputs then replace the app's as a NIfTI load does.
"""

import re

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from ..errors import QSMInputError
from . import inputs


class DataSourcesPanel:
    """The BIDS and DICOM rows of the Data panel.

    Parameters
    ----------
    app : qsmlib.web.app.QSMWebApp
        Gives the data folder, the scene, and the inputs it replaces
        (``app.magnitude``, ``app.phase``).
    """

    def __init__(self, app):
        self.app = app
        state = app.state
        state.bids_datasets = []
        state.bids_dataset = None
        state.bids_subjects = []
        state.bids_subject = None
        state.bids_sessions = []
        state.bids_session = None
        state.dicom_folders = []
        state.dicom_folder = None
        state.change("bids_dataset")(self._on_dataset)
        state.change("bids_subject")(self._on_subject)
        app.server.controller.on_client_connected.add(self.refresh)
        self.refresh()

    @property
    def state(self):
        return self.app.state

    def refresh(self, *_args):
        """Read the data folder's BIDS datasets and folders again (a page connects, a box gets the focus)."""
        folder = self.app.data_folder
        datasets, folders = inputs.bids_datasets(folder), folder.folders()
        with self.state:
            if datasets != self.state.bids_datasets:
                self.state.bids_datasets = datasets
            if folders != self.state.dicom_folders:
                self.state.dicom_folders = folders
            if self.state.bids_dataset not in datasets:
                self.state.bids_dataset = datasets[0] if datasets else None

    def _on_dataset(self, bids_dataset, **_):
        subjects = inputs.bids_subjects(self.app.data_folder, bids_dataset) if bids_dataset else []
        self.state.bids_subjects = subjects
        if self.state.bids_subject not in subjects:
            self.state.bids_subject = subjects[0] if subjects else None
        self._on_subject(self.state.bids_subject)

    def _on_subject(self, bids_subject, **_):
        sessions = inputs.bids_sessions(self.app.data_folder, self.state.bids_dataset, bids_subject)
        self.state.bids_sessions = sessions
        if self.state.bids_session not in sessions:
            self.state.bids_session = sessions[0] if sessions else None

    # -- loading --------------------------------------------------------------------------------

    def load_bids(self, dataset=None, subject=None, session=None):
        """Load the MEGRE series of the chosen subject (and session) of a BIDS dataset of the data folder.

        The page sends the choices it shows with the click.
        """
        if self.state.running:
            return
        dataset = dataset or self.state.bids_dataset
        if not dataset:
            self._error("BIDS: the data folder holds no BIDS dataset (a folder with sub-* folders); copy one "
                        f"into {self.app.data_folder.root}")
            return
        subject = subject or self.state.bids_subject
        session = session or (self.state.bids_session if subject == self.state.bids_subject else None)
        try:
            data, found = inputs.load_bids(self.app.data_folder, dataset, subject, session)
        except (QSMInputError, OSError) as exc:
            self._error(str(exc))
            return
        where = f"sub-{found['subject']}" + (f"/ses-{found['session']}" if found["session"] else "")
        self._replace_inputs(data, f"BIDS {dataset}: {where}, {len(found['magnitude'])} echoes; echo times and "
                                   "field strength from the sidecars.")

    def load_dicom(self, name=None):
        """Load a multi-echo GRE acquisition from a DICOM folder of the data folder."""
        if self.state.running:
            return
        name = name if name is not None else self.state.dicom_folder
        if not name:
            self._error("DICOM: no folder chosen; choose the folder of the magnitude and phase series")
            return
        try:
            data = inputs.load_dicom_folder(self.app.data_folder, name)
        except (QSMInputError, OSError) as exc:
            self._error(str(exc))
            return
        # "series 5 'gre_mag' (1.2.826...)": the number and description, without the UID
        series = ", ".join(re.sub(r" \([0-9.]+\)$", "", text) for text in data.sources.get("dicom_series", []))
        self._replace_inputs(data, f"DICOM {name}: {series}, {data.magnitude.shape[3]} echoes; echo times and "
                                   "field strength from the DICOM attributes.")

    def _error(self, text):
        self.app._set_status(text, "error")

    def _replace_inputs(self, data, text):
        from qsmslicer import nodes

        app = self.app
        app._clear_scene_inputs()
        app.magnitude = nodes.echo_series(app.scene, data.magnitude, data.affine, "Magnitude")
        app.phase = nodes.echo_series(app.scene, data.phase, data.affine, "Phase", phase_scaling=data.phase_scaling)
        self.state.te_text = ", ".join(f"{float(t):g}" for t in data.te_s)
        self.state.b0_text = f"{float(data.b0_t):g}"
        app._inputs_ready(text)

    # -- the page -------------------------------------------------------------------------------

    def build(self):
        """The BIDS and DICOM rows (inside the app's Data panel)."""
        html.Div("BIDS dataset", classes="text-subtitle-2 mt-3")
        v3.VSelect(label="Dataset (folder with sub-* folders)", id="qsm-bids-dataset", v_model=("bids_dataset",),
                   items=("bids_datasets",), density="compact", hide_details=True, classes="my-2",
                   no_data_text="no BIDS dataset in the data folder", update_focused=(self.refresh, "[$event]"))
        with html.Div(classes="d-flex"):
            v3.VSelect(label="Subject", id="qsm-bids-subject", v_model=("bids_subject",), items=("bids_subjects",),
                       density="compact", hide_details=True, classes="my-2 mr-2")
            v3.VSelect(label="Session", id="qsm-bids-session", v_model=("bids_session",), items=("bids_sessions",),
                       density="compact", hide_details=True, classes="my-2", disabled=("!bids_sessions.length",))
        v3.VBtn("Load BIDS subject", id="qsm-load-bids", block=True, disabled=("running || !bids_dataset",),
                click=(self.load_bids, "[bids_dataset, bids_subject, bids_session]"))
        html.Div("DICOM folder", classes="text-subtitle-2 mt-3")
        v3.VCombobox(label="Folder of the magnitude and phase series", id="qsm-dicom", v_model=("dicom_folder",),
                     items=("dicom_folders",), density="compact", hide_details=True, classes="my-2",
                     update_focused=(self.refresh, "[$event]"))
        v3.VBtn("Load DICOM folder", id="qsm-load-dicom", block=True, disabled=("running",),
                click=(self.load_dicom, "[dicom_folder]"))
