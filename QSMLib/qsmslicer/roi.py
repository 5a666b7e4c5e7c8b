"""ROI statistics on an MRML scene: segments, statistics table, bar plot and CSV.

The scene-level half of ROI Susceptibility's Logic, shared by the Slicer module
(``ROISusceptibilityLogic`` adds the parameter node to it) and the web app, which
runs it on a plain MRML scene of slicer-core. It needs MRML and qsmlib only: no
Slicer application, no Qt, no ``slicer.mrmlScene`` (new nodes go to the scene of
the nodes they come from).
"""

import logging
import os

import numpy as np
import slicer
import vtk

# The deep grey matter segments, names and colours (RGB 0-255), live in qsmlib so that atlas templates
# written by qsmlib (the head model) carry the same names and colours as the segments created here.
from qsmlib.atlas.template import DEEP_GREY_MATTER_SEGMENTS
from qsmlib.errors import QSMInputError
from qsmslicer import nodes
from qsmslicer.i18n import tr as _

#: Table columns: name, unit, description. SD is the population SD of the segment's voxels.
STATISTICS_COLUMNS = (
    ("Segment", "", "Segment name"),
    ("Mean", "ppm", "Mean susceptibility"),
    ("Median", "ppm", "Median susceptibility"),
    ("SD", "ppm", "Standard deviation of the susceptibility over the segment's voxels"),
    ("Min", "ppm", "Minimum susceptibility"),
    ("Max", "ppm", "Maximum susceptibility"),
    ("Voxel count", "voxels", "Number of voxels in the segment"),
    ("Volume", "mm3", "Segment volume"),
)
#: Columns added when the chi-separation parts are given: name, unit, description. The parts
#: have an absolute zero (R2' fixes it), so they are never referenced.
SEPARATION_COLUMNS = (
    ("Mean chi_pos", "ppm", "Mean paramagnetic susceptibility (chi-separation; not referenced)"),
    ("Mean chi_neg", "ppm", "Mean diamagnetic susceptibility (chi-separation; not referenced)"),
)
REFERENCES = ("none", "brain", "segment")
#: Table attributes that record the reference.
REFERENCE_ATTRIBUTE = "QSM.Reference"
REFERENCE_OFFSET_ATTRIBUTE = "QSM.ReferenceOffsetPpm"
#: Node reference from a statistics table to the mean - SD / mean + SD table of its plot.
ERROR_BAR_TABLE_REFERENCE = "QSMErrorBars"
#: Segmentation attributes that record where atlas segments came from.
ATLAS_ATTRIBUTE = "QSM.AtlasTemplate"
ATLAS_QUALITY_ATTRIBUTE = "QSM.AtlasRegistration"


class RoiLogic:
    """Segments, statistics table, plot and CSV on the scene of the given nodes. Runs without a GUI."""

    # -- segments -------------------------------------------------------------------------------

    @staticmethod
    def segmentIdByName(segmentation_node, name):
        segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
        if not segment_id:
            raise QSMInputError(f"segmentation '{segmentation_node.GetName()}' has no segment named '{name}'")
        return segment_id

    @staticmethod
    def segmentName(segmentation_node, segment_id):
        """Name of a segment ("" for no segmentation, no ID or an unknown ID)."""
        if segmentation_node is None or not segment_id:
            return ""
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        return segment.GetName() if segment is not None else ""

    def createDeepGreyMatterSegments(self, segmentation_node, reference_volume=None):
        """Add the empty deep grey matter segments, standard names and colours.

        Segments whose name already exists are kept as they are. With a
        reference volume, the segmentation is drawn on that volume's voxels.
        Returns the IDs of the deep grey matter segments, in
        :data:`DEEP_GREY_MATTER_SEGMENTS` order.
        """
        if reference_volume is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        segmentation = segmentation_node.GetSegmentation()
        ids = []
        for name, rgb in DEEP_GREY_MATTER_SEGMENTS:
            segment_id = segmentation.GetSegmentIdBySegmentName(name)
            if not segment_id:
                segment_id = segmentation.AddEmptySegment("", name, [c / 255.0 for c in rgb])
            ids.append(segment_id)
        return ids

    # -- segments from an atlas template ----------------------------------------------------------

    def segmentFromAtlas(self, volume_node, segmentation_node, template_folder, *, brain_mask=None, options=None,
                         progress=None):
        """Register an atlas template to the susceptibility map and fill the segmentation with its labels.

        The template (see :mod:`qsmlib.atlas.template`) is registered to the
        map (rigid, affine, deformable; :func:`qsmlib.atlas.register_template`).
        Each of its labels becomes a segment named as in the template's label
        table and coloured from the table, else as the standard deep grey matter
        segment of that name; a segment of the same name is replaced. The
        segmentation is drawn on the map's voxels. An implausible registration
        raises :class:`qsmlib.atlas.RegistrationFailed` and changes nothing.

        Parameters
        ----------
        volume_node : vtkMRMLScalarVolumeNode
            Susceptibility map (ppm), 0 outside the brain.
        segmentation_node : vtkMRMLSegmentationNode
        template_folder : path
        brain_mask : labelmap or segmentation node, optional
            The brain (default: the map's non-zero voxels).
        options : qsmlib.atlas.RegistrationOptions, optional
        progress : callable(stage, fraction), optional
            For example a :class:`qsmslicer.progress.ProgressAdapter`; may raise Cancelled.

        Returns
        -------
        qsmlib.atlas.RegistrationResult
            With ``segment_ids``, the IDs of the filled segments in label order.
        """
        from qsmlib.atlas import load_template
        from qsmlib.atlas.segment import label_colors, segment_arrays

        template = load_template(str(template_folder))
        chi = nodes.array_from_volume(volume_node, np.float32)
        affine = nodes.ijk_to_ras(volume_node)
        mask = nodes.mask_from_node(brain_mask, volume_node) if brain_mask is not None else None
        result = segment_arrays(template, chi_ppm=chi, affine=affine, mask=mask, options=options, progress=progress)
        standard = dict(DEEP_GREY_MATTER_SEGMENTS)
        table_colors = label_colors(template.table)
        items = []
        for value, info in sorted(template.table.items()):
            rgb = info.color if info.color is not None else standard.get(info.name, table_colors[value])
            items.append((value, info.name, rgb))
        result.segment_ids = self._fillSegments(segmentation_node, volume_node, result.labels, affine, items)
        segmentation_node.SetAttribute(ATLAS_ATTRIBUTE, f"{template.name} ({template.folder})")
        quality = result.quality
        segmentation_node.SetAttribute(ATLAS_QUALITY_ATTRIBUTE, (
            f"affine determinant {quality['determinant']:.3f}; {quality['similarity']['metric']} "
            f"{quality['similarity']['value']:.3f}"))
        logging.info("Atlas %s: %d segments on %s (%s)", template.name, len(items), volume_node.GetName(),
                     segmentation_node.GetAttribute(ATLAS_QUALITY_ATTRIBUTE))
        return result

    @staticmethod
    def _fillSegments(segmentation_node, volume_node, labels, affine, items):
        """One segment per ``(label value, name, rgb)`` from the label array; returns their IDs."""
        scene = nodes.scene_of(segmentation_node)
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation = segmentation_node.GetSegmentation()
        before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("QSM_temporary"))
        ids = []
        try:
            for value, name, rgb in items:
                nodes.update_volume_from_array(labelmap, (labels == value).astype(np.uint8), affine)
                existing = segmentation.GetSegmentIdBySegmentName(name)
                if existing:
                    segmentation.RemoveSegment(existing)
                known = set(nodes.segment_ids(segmentation_node))
                if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                        labelmap, segmentation_node):
                    raise QSMInputError(f"could not add the segment '{name}' to '{segmentation_node.GetName()}'")
                added = [i for i in nodes.segment_ids(segmentation_node) if i not in known]
                segment = segmentation.GetSegment(added[0])
                segment.SetName(name)
                segment.SetColor(*[c / 255.0 for c in rgb])
                ids.append(added[0])
        finally:
            added_nodes = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
            for node in [node for node in added_nodes if node.GetID() not in before]:
                scene.RemoveNode(node)
        return ids

    @staticmethod
    def atlasSummary(result):
        """One line for the panel: how many segments, and the registration's checks."""
        quality = result.quality
        return _("{count} segments from the atlas; affine determinant {det:.2f}, {metric} {value:.2f}").format(
            count=len(result.segment_ids), det=quality["determinant"], metric=quality["similarity"]["metric"],
            value=quality["similarity"]["value"])

    # -- statistics -----------------------------------------------------------------------------

    @staticmethod
    def regionStatistics(values, voxel_volume_mm3):
        """Mean, median, SD (population), min, max, count and volume of a set of voxel values."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            nan = float("nan")
            return {"Mean": nan, "Median": nan, "SD": nan, "Min": nan, "Max": nan, "Voxel count": 0, "Volume": 0.0}
        return {"Mean": float(values.mean()), "Median": float(np.median(values)), "SD": float(values.std()),
                "Min": float(values.min()), "Max": float(values.max()), "Voxel count": int(values.size),
                "Volume": float(values.size * voxel_volume_mm3)}

    def computeStatistics(self, volume_node, segmentation_node, segment_ids=None, *, reference="none",
                          reference_segment_id=None, brain_mask=None, table=None, chi_pos=None, chi_neg=None):
        """Statistics per segment of ``volume_node`` (ppm) into a table node.

        Parameters
        ----------
        volume_node : vtkMRMLScalarVolumeNode
            Susceptibility map in ppm.
        segmentation_node : vtkMRMLSegmentationNode
            Segments are resampled onto the volume's voxels (Slicer's export).
        segment_ids : list of str, optional
            Default: every segment.
        reference : {"none", "brain", "segment"}
            Subtract the mean over the whole brain or over a segment from mean,
            median, min and max (SD, count and volume do not change).
        reference_segment_id : str, optional
            For ``reference="segment"``.
        brain_mask : labelmap or segmentation node, optional
            The whole brain for ``reference="brain"``; default: the voxels where
            the map is non-zero (QSM outputs are 0 outside their mask).
        table : vtkMRMLTableNode, optional
            Table to overwrite; default: a new one named after the volume.
        chi_pos, chi_neg : vtkMRMLScalarVolumeNode, optional
            The paramagnetic and diamagnetic parts (ppm) of a chi-separation on
            the volume's voxels; both or neither. Their mean per segment is
            added, never referenced (R2' fixes their zero).

        Returns
        -------
        vtkMRMLTableNode
            One row per segment; columns :data:`STATISTICS_COLUMNS` with units,
            then :data:`SEPARATION_COLUMNS` when the parts are given.
        """
        if reference not in REFERENCES:
            raise QSMInputError(f"reference '{reference}' is unknown; choose one of {', '.join(REFERENCES)}")
        if (chi_pos is None) != (chi_neg is None):
            raise QSMInputError("give both chi_pos and chi_neg, or neither")
        parts = {}
        if chi_pos is not None:
            for name, node in (("Mean chi_pos", chi_pos), ("Mean chi_neg", chi_neg)):
                nodes.check_same_geometry(node, volume_node, name.split()[1])
                parts[name] = nodes.array_from_volume(node, np.float64)
        chi = nodes.array_from_volume(volume_node, np.float64)
        voxel_volume = float(np.prod(nodes.voxel_size(volume_node)))
        ids = list(segment_ids) if segment_ids else nodes.segment_ids(segmentation_node)
        segmentation = segmentation_node.GetSegmentation()
        offset, reference_label = 0.0, "none"
        if reference == "brain":
            region = (nodes.mask_from_node(brain_mask, volume_node) if brain_mask is not None else chi != 0)
            reference_label = f"whole brain ({brain_mask.GetName() if brain_mask is not None else 'non-zero voxels'})"
        elif reference == "segment":
            if not reference_segment_id:
                raise QSMInputError("reference 'segment' needs a reference segment")
            region = nodes.segment_mask(segmentation_node, [reference_segment_id], volume_node)
            reference_label = f"segment {segmentation.GetSegment(reference_segment_id).GetName()}"
        if reference != "none":
            if not region.any():
                raise QSMInputError(f"reference region ({reference_label}) is empty; draw it or choose another")
            offset = float(chi[region].mean())

        rows = []
        for segment_id in ids:
            mask = nodes.segment_mask(segmentation_node, [segment_id], volume_node)
            stats = self.regionStatistics(chi[mask], voxel_volume)
            for key in ("Mean", "Median", "Min", "Max"):
                stats[key] -= offset
            for name, values in parts.items():
                stats[name] = float(values[mask].mean()) if mask.any() else float("nan")
            rows.append((segmentation.GetSegment(segment_id).GetName(), stats))

        scene = nodes.scene_of(volume_node)
        if table is None:
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(
                f"{volume_node.GetName()}_statistics"))
        self._fillTable(table, rows, STATISTICS_COLUMNS + (SEPARATION_COLUMNS if parts else ()))
        table.SetAttribute(REFERENCE_ATTRIBUTE, reference_label)
        table.SetAttribute(REFERENCE_OFFSET_ATTRIBUTE, repr(offset))
        table.SetAttribute("QSM.Volume", volume_node.GetName())
        table.SetAttribute("QSM.ChiPos", chi_pos.GetName() if chi_pos is not None else "")
        table.SetAttribute("QSM.ChiNeg", chi_neg.GetName() if chi_neg is not None else "")
        logging.info("ROI statistics of %s over %d segments, reference %s (%.4f ppm)",
                     volume_node.GetName(), len(rows), reference_label, offset)
        return table

    @staticmethod
    def _fillTable(table, rows, columns=STATISTICS_COLUMNS):
        was_modifying = table.StartModify()
        table.RemoveAllColumns()
        for name, unit, description in columns:
            if name == "Segment":
                column = vtk.vtkStringArray()
            elif name == "Voxel count":
                column = vtk.vtkIntArray()
            else:
                column = vtk.vtkDoubleArray()
            column.SetName(name)
            for segment_name, stats in rows:
                if name == "Segment":
                    column.InsertNextValue(segment_name)
                else:
                    column.InsertNextValue(stats[name])
            table.AddColumn(column)
            table.SetColumnUnitLabel(name, unit)
            table.SetColumnDescription(name, description)
            # SetColumnTitle replaced SetColumnLongName in recent Slicer versions
            set_title = getattr(table, "SetColumnTitle", None) or table.SetColumnLongName
            set_title(name, f"{name} ({unit})" if unit else name)
        table.EndModify(was_modifying)

    # -- plot and export ------------------------------------------------------------------------

    def createBarPlot(self, table, chart=None):
        """A bar chart of the mean per segment with mean - SD and mean + SD whisker marks.

        MRML plot series have no error bars, so the SD is drawn as two marker-only
        line series, "Mean - SD" and "Mean + SD", from a small table beside the
        statistics table (``<table> error bars``, refreshed on every call). Bar and
        line series without an X column are drawn at the row index, so each mark
        sits on its segment's bar. When the table has the chi-separation columns,
        their means are two more bar series (after the marks) beside the total's. Returns the chart node.
        """
        scene = nodes.scene_of(table)
        values = table.GetTable()
        means = [values.GetValueByName(row, "Mean").ToDouble() for row in range(values.GetNumberOfRows())]
        sds = [values.GetValueByName(row, "SD").ToDouble() for row in range(values.GetNumberOfRows())]
        bounds = self._errorBarTable(table)
        was_modifying = bounds.StartModify()
        bounds.RemoveAllColumns()
        for name, column_values in (("Mean - SD", [m - s for m, s in zip(means, sds)]),
                                    ("Mean + SD", [m + s for m, s in zip(means, sds)])):
            column = vtk.vtkDoubleArray()
            column.SetName(name)
            for value in column_values:
                column.InsertNextValue(value)
            bounds.AddColumn(column)
            bounds.SetColumnUnitLabel(name, "ppm")
        bounds.EndModify(was_modifying)

        mean = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{table.GetName()} mean")
        mean.SetAndObserveTableNodeID(table.GetID())
        mean.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        mean.SetLabelColumnName("Segment")
        mean.SetYColumnName("Mean")
        mean.SetColor(0.45, 0.6, 0.85)
        series = [mean]
        for name in ("Mean - SD", "Mean + SD"):
            whisker = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{table.GetName()} {name}")
            whisker.SetAndObserveTableNodeID(bounds.GetID())
            whisker.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeLine)
            whisker.SetYColumnName(name)
            whisker.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
            whisker.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCross)
            whisker.SetMarkerSize(12)
            whisker.SetColor(0.0, 0.0, 0.0)
            series.append(whisker)
        has_parts = values.GetColumnByName(SEPARATION_COLUMNS[0][0]) is not None
        if has_parts:
            for (name, _unit, _description), color in zip(SEPARATION_COLUMNS, ((0.85, 0.3, 0.25), (0.15, 0.3, 0.55))):
                part = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{table.GetName()} {name}")
                part.SetAndObserveTableNodeID(table.GetID())
                part.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
                part.SetLabelColumnName("Segment")
                part.SetYColumnName(name)
                part.SetColor(*color)
                series.append(part)
        if chart is None:
            chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{table.GetName()} chart")
        chart.RemoveAllPlotSeriesNodeIDs()
        for node in series:
            chart.AddAndObservePlotSeriesNodeID(node.GetID())
        chart.SetTitle("Mean susceptibility per segment (marks: mean - SD, mean + SD)" + (
            "; chi_pos and chi_neg: chi-separation parts" if has_parts else ""))
        chart.SetYAxisTitle("Mean susceptibility (ppm)")
        chart.SetXAxisTitle("Segment")
        return chart

    @staticmethod
    def _errorBarTable(table):
        """The table of mean - SD and mean + SD beside ``table`` (created on first use)."""
        scene = nodes.scene_of(table)
        bounds = table.GetNodeReference(ERROR_BAR_TABLE_REFERENCE)
        if bounds is None:
            bounds = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{table.GetName()} error bars")
            table.SetNodeReferenceID(ERROR_BAR_TABLE_REFERENCE, bounds.GetID())
        return bounds

    @staticmethod
    def exportCsv(table, path):
        """Write the table as CSV (Slicer's table storage node; units go to the .schema.csv beside it).

        A path without an extension gets ``.csv``; ``.tsv`` writes tab-separated values.
        Returns the path written.
        """
        path = str(path)
        extension = os.path.splitext(path)[1].lower()
        if not extension:
            path, extension = path + ".csv", ".csv"
        if extension not in (".csv", ".tsv", ".txt"):
            raise QSMInputError(f"'{path}': statistics are written as .csv or .tsv; choose one of those extensions")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise QSMInputError(f"'{path}': the folder {folder} does not exist; choose an existing folder")
        storage = slicer.vtkMRMLTableStorageNode()
        storage.SetFileName(path)
        if not storage.WriteData(table):
            raise QSMInputError(f"could not write '{path}'; check that the folder is writable")
        return path
