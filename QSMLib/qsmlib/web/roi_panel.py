"""ROI Susceptibility in the browser: deep grey matter segments, painting, statistics table, CSV.

Everything is done by the Slicer module's Logic (``qsmslicer.roi.RoiLogic``)
on the app's scene: the segments with their standard names and colours, the
statistics table node and its CSV. Painting is trame-slicer's segment editor
(Slicer's own segment editor logic) on the susceptibility map's voxels.
"""

import os
import tempfile

import numpy as np
from trame.widgets import html
from trame.widgets import vuetify3 as v3

from ..errors import QSMInputError

#: References of the statistics (those of RoiLogic.computeStatistics).
ROI_REFERENCES = ("none", "brain", "segment")
#: Default brush diameter (mm): a few voxels of a 1-2 mm map.
BRUSH_MM = 6.0
SEGMENTATION_NAME = "DeepGreyMatter"


class RoiPanel:
    """The ROI part of the side panel, working on the app's last susceptibility map.

    Parameters
    ----------
    app : qsmlib.web.app.QSMWebApp
        Gives the server, the Slicer core (scene, segment editor) and the
        output nodes of the last run (``app.outputs``).
    """

    def __init__(self, app):
        self.app = app
        self.segmentation = None
        self.table = None
        state = app.state
        state.roi_segments = []
        state.roi_active = None
        state.roi_paint = False
        state.roi_brush_mm = BRUSH_MM
        state.roi_reference = "none"
        state.roi_reference_segment = None
        state.roi_columns = []
        state.roi_rows = []
        state.roi_reference_text = ""
        state.roi_edits = 0
        state.change("roi_active")(self._on_active_segment)
        self.editor.segmentation_modified.connect(self._on_segmentation_modified)
        state.change("roi_paint", "roi_brush_mm")(self._on_paint)

    @property
    def state(self):
        return self.app.state

    @property
    def editor(self):
        return self.app.slicer_app.segmentation_editor

    def reset(self):
        """Forget the segments and table (a new run replaced the map they belong to)."""
        scene = self.app.scene
        if self.state.roi_paint:
            self.state.roi_paint = False
        self.editor.deactivate_effect()
        for node in (self.segmentation, self.table):
            if node is not None:
                scene.RemoveNode(node)
        self.segmentation = self.table = None
        self.state.roi_segments = []
        self.state.roi_active = None
        self.state.roi_rows = []
        self.state.roi_columns = []
        self.state.roi_reference_text = ""
        self.state.roi_edits = 0

    # -- segments and painting ---------------------------------------------------------------------

    def create_segments(self):
        """The standard deep grey matter segments (empty), on the susceptibility map's voxels."""
        from qsmslicer.roi import RoiLogic

        chi = self.app.outputs.get("susceptibility")
        if chi is None:
            self.app._set_status("No susceptibility map yet: run a reconstruction first.", "error")
            return
        if self.segmentation is None:
            self.segmentation = self.editor.create_empty_segmentation_node()
            self.segmentation.SetName(self.app.scene.GenerateUniqueName(SEGMENTATION_NAME))
        ids = RoiLogic().createDeepGreyMatterSegments(self.segmentation, reference_volume=chi)
        self.editor.set_active_segmentation(self.segmentation, chi)
        segmentation = self.segmentation.GetSegmentation()
        self.state.roi_segments = [{"id": segment_id, "name": segmentation.GetSegment(segment_id).GetName(),
                                    "color": _hex(segmentation.GetSegment(segment_id).GetColor())}
                                   for segment_id in ids]
        self.state.roi_active = ids[0]
        self.editor.set_active_segment_id(ids[0])
        self.app._set_status(f"{len(ids)} deep grey matter segments created: choose one, switch Paint on and "
                             "paint it in a slice view.", "info")

    def _on_segmentation_modified(self, *_args):
        # counts the strokes that reached the segmentation (the panel and the tests wait on it)
        with self.state:
            self.state.roi_edits += 1

    def _on_active_segment(self, roi_active, **_):
        if self.segmentation is not None and roi_active:
            self.editor.set_active_segment_id(roi_active)

    def _on_paint(self, roi_paint, roi_brush_mm, **_):
        from trame_slicer.segmentation import BrushDiameterMode, SegmentationEffectPaint

        if self.segmentation is None or not roi_paint:
            self.editor.deactivate_effect()
            return
        try:
            diameter = float(roi_brush_mm)
        except (TypeError, ValueError):
            diameter = 0.0
        if not diameter > 0:
            self.app._set_status(f"brush diameter {roi_brush_mm!r}: give a positive number of mm", "error")
            return
        effect = self.editor.active_effect
        if not isinstance(effect, SegmentationEffectPaint):
            effect = self.editor.set_active_effect_type(SegmentationEffectPaint)
        effect.set_brush_diameter(diameter, BrushDiameterMode.Absolute)

    # -- statistics -----------------------------------------------------------------------------

    def compute(self):
        """The statistics table of every segment (RoiLogic.computeStatistics), shown in the panel."""
        from qsmslicer.roi import RoiLogic

        chi = self.app.outputs.get("susceptibility")
        if chi is None or self.segmentation is None:
            self.app._set_status("Create the segments and paint them first.", "error")
            return
        reference = self.state.roi_reference
        try:
            self.table = RoiLogic().computeStatistics(
                chi, self.segmentation, reference=reference,
                reference_segment_id=self.state.roi_reference_segment if reference == "segment" else None,
                brain_mask=self.app.outputs.get("mask") if reference == "brain" else None, table=self.table)
        except QSMInputError as exc:
            self.app._set_status(str(exc), "error")
            return
        columns, rows = _table_rows(self.table)
        self.state.roi_columns = columns
        self.state.roi_rows = rows
        self.state.roi_reference_text = f"reference: {self.table.GetAttribute('QSM.Reference')}"
        self.app._set_status(f"Statistics of {len(rows)} segments ({self.state.roi_reference_text}).", "success")

    def download_csv(self):
        """The table as CSV, written by RoiLogic.exportCsv."""
        from qsmslicer.roi import RoiLogic

        if self.table is None:
            return None
        with tempfile.TemporaryDirectory(prefix="qsm-web-") as folder:
            path = RoiLogic.exportCsv(self.table, os.path.join(folder, "statistics.csv"))
            with open(path, "rb") as f:
                return f.read()

    def download_labels(self):
        """The segments as a label image on the map's voxels (label N = the table's Nth segment), .nii.gz."""
        from qsmlib.io import save_nifti
        from qsmslicer import nodes

        chi = self.app.outputs.get("susceptibility")
        if chi is None or self.segmentation is None:
            return None
        labels = np.zeros(nodes.dimensions(chi), dtype=np.uint8)
        for label, segment in enumerate(self.state.roi_segments, start=1):
            labels[nodes.segment_mask(self.segmentation, [segment["id"]], chi)] = label
        with tempfile.TemporaryDirectory(prefix="qsm-web-") as folder:
            path = os.path.join(folder, "segments.nii.gz")
            save_nifti(path, labels, nodes.ijk_to_ras(chi), dtype=np.uint8)
            with open(path, "rb") as f:
                return f.read()

    # -- the panel ------------------------------------------------------------------------------

    def build(self):
        """The panel's widgets (called inside the side panel, shown once a map exists)."""
        trigger = self.app.server.controller.trigger_name
        html.Div("ROI Susceptibility", classes="text-h6", v_if=("has_result",))
        with html.Div(v_if=("has_result",)):
            v3.VBtn("Create deep grey matter segments", id="qsm-roi-create", block=True, classes="my-2",
                    click=self.create_segments, disabled=("running",))
            with html.Div(v_if=("roi_segments.length",)):
                v3.VSelect(label="Segment to paint", id="qsm-roi-segment", v_model=("roi_active",),
                           items=("roi_segments",), item_title="name", item_value="id", density="compact",
                           hide_details=True, classes="my-2")
                with html.Div(classes="d-flex align-center"):
                    v3.VSwitch(label="Paint", id="qsm-roi-paint", v_model=("roi_paint",), color="primary",
                               hide_details=True, density="compact", classes="mr-4")
                    v3.VTextField(label="Brush diameter (mm)", id="qsm-roi-brush", v_model_number=("roi_brush_mm",),
                                  type="number", density="compact", hide_details=True)
                with v3.VRadioGroup(v_model=("roi_reference",), inline=True, label="Reference", hide_details=True,
                                    id="qsm-roi-reference"):
                    for reference in ROI_REFERENCES:
                        v3.VRadio(label=reference, value=reference, id=f"qsm-roi-reference-{reference}")
                v3.VSelect(label="Reference segment", id="qsm-roi-reference-segment",
                           v_if=("roi_reference === 'segment'",), v_model=("roi_reference_segment",),
                           items=("roi_segments",), item_title="name", item_value="id", density="compact",
                           hide_details=True, classes="my-2")
                html.Div("{{ roi_edits }} edit(s) of the segments", id="qsm-roi-edits", classes="text-caption")
                v3.VBtn("Compute statistics", id="qsm-roi-compute", block=True, classes="my-2", color="primary",
                        click=self.compute)
            with html.Div(v_if=("roi_rows.length",)):
                html.Div("{{ roi_reference_text }}", classes="text-caption")
                with v3.VTable(density="compact", id="qsm-roi-table", classes="text-caption"):
                    with html.Thead():
                        with html.Tr():
                            html.Th("{{ c }}", v_for="c in roi_columns", key="c")
                    with html.Tbody():
                        with html.Tr(v_for="r in roi_rows", key="r[0]"):
                            html.Td("{{ v }}", v_for="(v, i) in r", key="i")
                with html.Div(classes="d-flex flex-wrap"):
                    v3.VBtn("statistics.csv", id="qsm-download-roi-csv", size="small", classes="ma-1",
                            prepend_icon="mdi-download",
                            click=f"utils.download('statistics.csv', trigger('{trigger(self.download_csv)}'), "
                                  "'text/csv')")
                    v3.VBtn("segments.nii.gz", id="qsm-download-roi-labels", size="small", classes="ma-1",
                            prepend_icon="mdi-download",
                            click=f"utils.download('segments.nii.gz', trigger('{trigger(self.download_labels)}'), "
                                  "'application/gzip')")


def _hex(rgb):
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


def _table_rows(table):
    """Column titles (with units) and rows of display text of a statistics table node."""
    vtk_table = table.GetTable()
    columns, rows = [], []
    names = [vtk_table.GetColumnName(c) for c in range(vtk_table.GetNumberOfColumns())]
    for name in names:
        unit = table.GetColumnUnitLabel(name)
        columns.append(f"{name} ({unit})" if unit else name)
    for r in range(vtk_table.GetNumberOfRows()):
        row = []
        for c, name in enumerate(names):
            value = vtk_table.GetValue(r, c)
            if name == "Segment":
                row.append(value.ToString())
            elif name == "Voxel count":
                row.append(str(value.ToInt()))
            else:
                number = value.ToDouble()
                row.append("-" if np.isnan(number) else f"{number:.4f}" if name != "Volume" else f"{number:.0f}")
        rows.append(row)
    return columns, rows
