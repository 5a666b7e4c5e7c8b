"""ROI Susceptibility in the browser: deep grey matter segments, painting, statistics table, plot, CSV.

Everything is done by the Slicer module's Logic (``qsmslicer.roi.RoiLogic``)
on the app's scene: the segments with their standard names and colours, the
statistics table node, its bar plot (``createBarPlot``: MRML chart and series
nodes) and its CSV. Painting is trame-slicer's segment editor (Slicer's own
segment editor logic) on the susceptibility map's voxels.

trame-slicer has no plot view, so the page draws the chart as SVG
(:func:`chart_svg`) from the chart node: each series' table, columns, plot
type and colour are read from the MRML nodes that the Logic made, so what is
plotted is the Logic's choice, as in Slicer's plot view.
"""

import html as html_text
import math

import os
import tempfile

import numpy as np
from trame.widgets import html
from trame.widgets import vuetify3 as v3

from ..errors import QSMInputError
from .downloads import download_button, nifti_bytes

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
        self.chart = None
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
        state.roi_plot_svg = ""
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
        self._remove_plot()
        for node in (self.segmentation, self.table):
            if node is not None:
                scene.RemoveNode(node)
        self.segmentation = self.table = self.chart = None
        self.state.roi_plot_svg = ""
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
        self._plot()
        self.app._set_status(f"Statistics of {len(rows)} segments ({self.state.roi_reference_text}).", "success")

    def _plot(self):
        """The Logic's bar plot of the table (new series nodes each time: the old ones are removed)."""
        from qsmslicer.roi import RoiLogic

        old_series = self._series_nodes()
        self.chart = RoiLogic().createBarPlot(self.table, chart=self.chart)
        current = {node.GetID() for node in self._series_nodes()}
        for node in old_series:
            if node.GetID() not in current:
                self.app.scene.RemoveNode(node)
        self.state.roi_plot_svg = chart_svg(self.chart)

    def _series_nodes(self):
        if self.chart is None:
            return []
        return [self.chart.GetNthPlotSeriesNode(n) for n in range(self.chart.GetNumberOfPlotSeriesNodes())]

    def _remove_plot(self):
        from qsmslicer.roi import ERROR_BAR_TABLE_REFERENCE

        scene = self.app.scene
        for node in self._series_nodes():
            scene.RemoveNode(node)
        if self.table is not None and self.table.GetNodeReference(ERROR_BAR_TABLE_REFERENCE) is not None:
            scene.RemoveNode(self.table.GetNodeReference(ERROR_BAR_TABLE_REFERENCE))
        if self.chart is not None:
            scene.RemoveNode(self.chart)

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
        from qsmslicer import nodes

        chi = self.app.outputs.get("susceptibility")
        if chi is None or self.segmentation is None:
            return None
        labels = np.zeros(nodes.dimensions(chi), dtype=np.uint8)
        for label, segment in enumerate(self.state.roi_segments, start=1):
            labels[nodes.segment_mask(self.segmentation, [segment["id"]], chi)] = label
        return nifti_bytes("segments.nii.gz", labels, nodes.ijk_to_ras(chi), np.uint8)

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
                html.Div(id="qsm-roi-plot", v_html=("roi_plot_svg",), classes="my-2")
                with v3.VTable(density="compact", id="qsm-roi-table", classes="text-caption"):
                    with html.Thead():
                        with html.Tr():
                            html.Th("{{ c }}", v_for="c in roi_columns", key="c")
                    with html.Tbody():
                        with html.Tr(v_for="r in roi_rows", key="r[0]"):
                            html.Td("{{ v }}", v_for="(v, i) in r", key="i")
                with html.Div(classes="d-flex flex-wrap"):
                    download_button("statistics.csv", "qsm-download-roi-csv", trigger(self.download_csv), "text/csv")
                    download_button("segments.nii.gz", "qsm-download-roi-labels", trigger(self.download_labels),
                                    "application/gzip")


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


#: Size of the plot (SVG user units = pixels in the side panel) and its margins: left, right, top, bottom.
PLOT_WIDTH, PLOT_HEIGHT = 350, 260
PLOT_MARGINS = (52, 8, 30, 78)


def _series_values(series):
    """Values of a plot series node: (labels or None, y values), read from its table node's columns."""
    table_node = series.GetTableNode()
    if table_node is None:
        return None, []
    table = table_node.GetTable()
    y_column = table.GetColumnByName(series.GetYColumnName())
    if y_column is None:
        return None, []
    values = [float(y_column.GetVariantValue(row).ToDouble()) for row in range(table.GetNumberOfRows())]
    label_name = series.GetLabelColumnName()
    label_column = table.GetColumnByName(label_name) if label_name else None
    labels = ([label_column.GetVariantValue(row).ToString() for row in range(table.GetNumberOfRows())]
              if label_column is not None else None)
    return labels, values


def _color(series):
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in series.GetColor())


def chart_svg(chart):
    """An SVG bar chart of a ``vtkMRMLPlotChartNode``, as Slicer's plot view draws it from the same nodes.

    Bar series are bars at the row index (side by side when there are
    several); line series without a line (marker only, as the Logic's
    mean - SD and mean + SD marks) are marks, and the marks at one row are
    joined by a vertical line: the error bar. Every bar and mark carries its
    row label and value as ``data-`` attributes. A row whose value is not a
    number (a segment without voxels) has a bar of no height.
    """
    import slicer

    bars, marks, labels = [], [], None
    for n in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(n)
        series_labels, values = _series_values(series)
        if series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar:
            bars.append((series, values))
            labels = labels or series_labels
        else:
            marks.append((series, values))
    rows = max([len(values) for _series, values in bars + marks] or [0])
    if rows == 0:
        return ""
    labels = labels or [str(row) for row in range(rows)]
    finite = [v for _series, values in bars + marks for v in values if math.isfinite(v)] + [0.0]
    low, high = min(finite), max(finite)
    if high - low <= 0:
        high, low = high + 1.0, low - 1.0
    pad = 0.05 * (high - low)
    low, high = (low - pad if low < 0 else low), high + pad
    left, right, top, bottom = PLOT_MARGINS
    width, height = PLOT_WIDTH - left - right, PLOT_HEIGHT - top - bottom

    def y_of(value):
        return top + height * (high - value) / (high - low)

    slot = width / rows
    bar_width = 0.8 * slot / max(len(bars), 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" '
           f'viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}" font-family="sans-serif" font-size="9">',
           f'<text x="{PLOT_WIDTH / 2}" y="11" text-anchor="middle" font-size="9">'
           f'{html_text.escape(chart.GetTitle() or "")}</text>']
    # axes: y ticks at five round values, the zero line, the axis titles
    for tick in _ticks(low, high):
        y = y_of(tick)
        out.append(f'<line x1="{left}" x2="{left + width}" y1="{y:.2f}" y2="{y:.2f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 3}" y="{y + 3:.2f}" text-anchor="end">{tick:g}</text>')
    out.append(f'<line x1="{left}" x2="{left + width}" y1="{y_of(0):.2f}" y2="{y_of(0):.2f}" stroke="#444"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + height}" stroke="#444"/>')
    out.append(f'<text class="qsm-y-title" transform="translate(11 {top + height / 2}) rotate(-90)" '
               f'text-anchor="middle">{html_text.escape(chart.GetYAxisTitle() or "")}</text>')
    for index, (series, values) in enumerate(bars):
        for row, value in enumerate(values):
            x = left + row * slot + 0.1 * slot + index * bar_width
            shown = value if math.isfinite(value) else 0.0
            y0, y1 = sorted((y_of(0), y_of(shown)))
            out.append(f'<rect class="qsm-bar" data-series="{html_text.escape(series.GetName() or "")}" '
                       f'data-label="{html_text.escape(labels[row])}" data-value="{value!r}" x="{x:.2f}" '
                       f'y="{y0:.2f}" width="{bar_width:.2f}" height="{y1 - y0:.2f}" fill="{_color(series)}"/>')
    for row in range(rows):
        values = [values[row] for _series, values in marks if row < len(values) and math.isfinite(values[row])]
        x = left + (row + 0.5) * slot
        if len(values) >= 2:
            out.append(f'<line class="qsm-error-bar" data-label="{html_text.escape(labels[row])}" '
                       f'data-low="{min(values)!r}" data-high="{max(values)!r}" x1="{x:.2f}" x2="{x:.2f}" '
                       f'y1="{y_of(min(values)):.2f}" y2="{y_of(max(values)):.2f}" stroke="#000"/>')
        for value in values:
            out.append(f'<line class="qsm-mark" x1="{x - 3:.2f}" x2="{x + 3:.2f}" y1="{y_of(value):.2f}" '
                       f'y2="{y_of(value):.2f}" stroke="#000"/>')
    for row, label in enumerate(labels):
        x, y = left + (row + 0.5) * slot, top + height + 6
        out.append(f'<text transform="translate({x:.2f} {y}) rotate(-55)" text-anchor="end">'
                   f'{html_text.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _ticks(low, high, count=5):
    """About ``count`` round values between low and high."""
    step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= step)
    first = math.ceil(low / step) * step
    return [round(first + n * step, 12) for n in range(int((high - first) / step) + 1)]
