"""ROI Susceptibility Logic on real MRML nodes: statistics, table units, plot, CSV, scene save and load."""

import csv

import numpy as np
import pytest

import slicer_support
import slicer

from qsmlib import QSMInputError
from qsmlib.atlas.template import DEEP_GREY_MATTER_SEGMENTS
from qsmslicer import nodes
from qsmslicer.roi import STATISTICS_COLUMNS
from ROISusceptibility import ROISusceptibilityLogic

SHAPE = (20, 16, 12)
AFFINE = np.array([[0.0, 0.0, 2.0, -12.0],  # oblique axes with anisotropic voxels
                   [1.5, 0.0, 0.0, 20.0],
                   [0.0, 1.25, 0.0, -7.0],
                   [0.0, 0.0, 0.0, 1.0]])
VOXEL_MM3 = 1.5 * 1.25 * 2.0


@pytest.fixture
def known():
    """A map with known values in three labelled regions, and the matching segmentation."""
    context = slicer_support.SceneLogics()
    scene = context.scene
    chi = np.zeros(SHAPE, np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    brain = np.zeros(SHAPE, bool)
    brain[1:19, 1:15, 1:11] = True
    chi[brain] = -0.01
    labels[2:6, 2:5, 2:4] = 1  # 24 voxels, values 0.000 .. 0.023
    chi[2:6, 2:5, 2:4] = np.arange(24, dtype=np.float32).reshape(4, 3, 2) * 0.001
    labels[10:13, 8:12, 5:9] = 2  # 48 voxels of 0.15
    chi[10:13, 8:12, 5:9] = 0.15
    labels[14:16, 3:5, 7:8] = 3  # 4 voxels of -0.05
    chi[14:16, 3:5, 7:8] = -0.05
    volume = nodes.output_volume(scene, "chi", chi, AFFINE)
    labelmap = nodes.output_volume(scene, "labels", labels, AFFINE, class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "regions")
    segmentation.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    ids = nodes.segment_ids(segmentation)
    for segment_id, name in zip(ids, ("Caudate", "Pallidum", "Vein")):
        segmentation.GetSegmentation().GetSegment(segment_id).SetName(name)
    brain_node = nodes.output_volume(scene, "brain", brain.astype(np.uint8), AFFINE,
                                     class_name="vtkMRMLLabelMapVolumeNode")
    return context, volume, segmentation, chi, labels, brain, brain_node


def _column(table, name):
    t = table.GetTable()
    column = t.GetColumnByName(name)
    return [column.GetValue(r) for r in range(t.GetNumberOfRows())]


def test_statistics_are_exact_with_units(known):
    _context, volume, segmentation, chi, labels, _brain, _ = known
    table = ROISusceptibilityLogic().computeStatistics(volume, segmentation)
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == [c[0] for c in STATISTICS_COLUMNS]
    assert [table.GetColumnUnitLabel(c[0]) for c in STATISTICS_COLUMNS] == ["", "ppm", "ppm", "ppm", "ppm", "ppm",
                                                                            "voxels", "mm3"]
    assert _column(table, "Segment") == ["Caudate", "Pallidum", "Vein"]
    for row, label in enumerate((1, 2, 3)):
        values = chi[labels == label].astype(np.float64)
        expected = {"Mean": values.mean(), "Median": np.median(values), "SD": values.std(), "Min": values.min(),
                    "Max": values.max(), "Volume": values.size * VOXEL_MM3}
        for name, value in expected.items():
            assert _column(table, name)[row] == pytest.approx(value, abs=1e-7), (name, label)
        assert _column(table, "Voxel count")[row] == values.size
    assert _column(table, "Voxel count") == [24, 48, 4]
    assert _column(table, "Mean")[0] == pytest.approx(0.0115, abs=1e-7)
    assert table.GetAttribute("QSM.Reference") == "none"


def test_reference_to_brain_and_to_a_segment(known):
    _context, volume, segmentation, chi, labels, brain, brain_node = known
    logic = ROISusceptibilityLogic()
    brain_mean = chi[brain].astype(np.float64).mean()
    by_mask = logic.computeStatistics(volume, segmentation, reference="brain", brain_mask=brain_node)
    by_support = logic.computeStatistics(volume, segmentation, reference="brain")  # non-zero voxels
    support_mean = chi[chi != 0].astype(np.float64).mean()
    plain_means = [chi[labels == k].astype(np.float64).mean() for k in (1, 2, 3)]
    assert _column(by_mask, "Mean") == pytest.approx([m - brain_mean for m in plain_means], abs=1e-7)
    assert _column(by_support, "Mean") == pytest.approx([m - support_mean for m in plain_means], abs=1e-7)
    assert float(by_mask.GetAttribute("QSM.ReferenceOffsetPpm")) == pytest.approx(brain_mean, abs=1e-9)
    vein = logic.segmentIdByName(segmentation, "Vein")
    by_vein = logic.computeStatistics(volume, segmentation, reference="segment", reference_segment_id=vein)
    assert _column(by_vein, "Mean") == pytest.approx([m + 0.05 for m in plain_means], abs=1e-7)
    assert _column(by_vein, "Max")[1] == pytest.approx(0.2, abs=1e-7)
    assert _column(by_vein, "SD") == pytest.approx(_column(by_mask, "SD"))  # spread does not move
    with pytest.raises(QSMInputError, match="no segment named"):
        logic.segmentIdByName(segmentation, "Hippocampus")
    # the segment selector gives an ID; the parameter node keeps the name, which maps back to it
    assert logic.segmentName(segmentation, vein) == "Vein"
    assert logic.segmentIdByName(segmentation, logic.segmentName(segmentation, vein)) == vein
    assert logic.segmentName(segmentation, "no such id") == "" and logic.segmentName(None, vein) == ""


def test_deep_grey_matter_segments_plot_and_csv(known, tmp_path):
    _context, volume, segmentation, chi, labels, _brain, _ = known
    logic = ROISusceptibilityLogic()
    ids = logic.createDeepGreyMatterSegments(segmentation, volume)
    again = logic.createDeepGreyMatterSegments(segmentation, volume)
    assert again == ids and len(ids) == 11
    seg = segmentation.GetSegmentation()
    assert seg.GetNumberOfSegments() == 3 + 11
    for segment_id, (name, rgb) in zip(ids, DEEP_GREY_MATTER_SEGMENTS):
        segment = seg.GetSegment(segment_id)
        assert segment.GetName() == name
        np.testing.assert_allclose(segment.GetColor(), np.array(rgb) / 255.0)
    names = [n for n, _ in DEEP_GREY_MATTER_SEGMENTS]
    assert {"Left caudate", "Right putamen", "Left globus pallidus", "Right thalamus", "Substantia nigra",
            "Red nucleus", "Dentate nucleus"} <= set(names)
    table = logic.computeStatistics(volume, segmentation)
    counts = dict(zip(_column(table, "Segment"), _column(table, "Voxel count")))
    assert counts["Left caudate"] == 0 and counts["Pallidum"] == 48  # new segments are empty
    assert np.isnan(_column(table, "Mean")[3])
    chart = logic.createBarPlot(table)
    _check_bar_plot(chart, table)
    path = logic.exportCsv(table, tmp_path / "stats.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["Segment"] for r in rows][:3] == ["Caudate", "Pallidum", "Vein"]
    assert float(rows[1]["Mean"]) == pytest.approx(0.15, abs=1e-7)
    assert float(rows[0]["Volume"]) == pytest.approx(24 * VOXEL_MM3)
    schema = (tmp_path / "stats.schema.csv").read_text()
    assert "ppm" in schema and "mm3" in schema


def _check_bar_plot(chart, table):
    """Bars of the table's means, and marks at mean - SD and mean + SD on the same rows."""
    assert chart.GetNumberOfPlotSeriesNodes() == 3
    bars, low, high = (chart.GetNthPlotSeriesNode(n) for n in range(3))
    assert bars.GetTableNode() is table and bars.GetYColumnName() == "Mean"
    assert bars.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar and bars.GetLabelColumnName() == "Segment"
    means, sds = np.array(_column(table, "Mean")), np.array(_column(table, "SD"))
    for series, column, expected in ((low, "Mean - SD", means - sds), (high, "Mean + SD", means + sds)):
        bounds = series.GetTableNode()
        assert bounds is not table and bounds.GetScene() is table.GetScene()
        assert series.GetYColumnName() == column and bounds.GetColumnUnitLabel(column) == "ppm"
        # no X column: line and bar series are drawn at the row index, so marks sit on their bars
        assert series.GetXColumnName() == "" and bars.GetXColumnName() == ""
        assert not series.IsXColumnRequired() and not bars.IsXColumnRequired()
        assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeLine
        assert series.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleNone
        assert series.GetMarkerStyle() != slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone
        np.testing.assert_allclose(_column(bounds, column), expected, rtol=0, atol=1e-12)  # NaN where empty
    assert chart.GetYAxisTitle() == "Mean susceptibility (ppm)"


def test_bar_plot_error_marks_follow_the_table(known):
    _context, volume, segmentation, chi, labels, brain, brain_node = known
    logic = ROISusceptibilityLogic()
    table = logic.computeStatistics(volume, segmentation)
    chart = logic.createBarPlot(table)
    _check_bar_plot(chart, table)
    caudate = chi[labels == 1].astype(np.float64)
    low = chart.GetNthPlotSeriesNode(1)
    assert _column(low.GetTableNode(), "Mean - SD")[0] == pytest.approx(caudate.mean() - caudate.std(), abs=1e-9)
    assert _column(chart.GetNthPlotSeriesNode(2).GetTableNode(), "Mean + SD")[2] == pytest.approx(-0.05, abs=1e-7)
    # recomputed against the brain: the same table and chart, the marks move with the means
    bounds = low.GetTableNode()
    logic.computeStatistics(volume, segmentation, reference="brain", brain_mask=brain_node, table=table)
    assert logic.createBarPlot(table, chart) is chart
    _check_bar_plot(chart, table)
    assert chart.GetNthPlotSeriesNode(1).GetTableNode() is bounds
    shift = chi[brain].astype(np.float64).mean()
    assert _column(bounds, "Mean - SD")[0] == pytest.approx(caudate.mean() - caudate.std() - shift, abs=1e-9)


def _check_reloaded(scene, chi, labels, table_means):
    volume = scene.GetFirstNodeByName("chi")
    np.testing.assert_array_equal(nodes.array_from_volume(volume), chi)
    np.testing.assert_allclose(nodes.ijk_to_ras(volume), AFFINE, atol=1e-9)
    segmentation = scene.GetFirstNodeByName("regions")
    caudate = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Caudate")
    np.testing.assert_array_equal(nodes.segment_mask(segmentation, [caudate], volume), labels == 1)
    table = scene.GetFirstNodeByName("chi_statistics")
    # the table file keeps about 7 significant digits (the float32 voxels carry no more)
    assert _column(table, "Mean") == pytest.approx(table_means, rel=1e-6, abs=1e-9)
    assert _column(table, "Voxel count") == [24, 48, 4]
    assert table.GetColumnUnitLabel("Volume") == "mm3" and table.GetColumnUnitLabel("Mean") == "ppm"
    again = ROISusceptibilityLogic().computeStatistics(volume, segmentation)
    assert _column(again, "Mean") == pytest.approx(table_means, abs=1e-12)


def test_saved_scene_reads_back_the_same_numbers(known, tmp_path):
    context, volume, segmentation, chi, labels, _brain, _ = known
    table = ROISusceptibilityLogic().computeStatistics(volume, segmentation)
    means = _column(table, "Mean")
    scene = context.scene
    # a scene folder (scene file + Data/), as Slicer's "Save" writes it
    folder = tmp_path / "scene"
    folder.mkdir()
    assert scene.SaveSceneToSlicerDataBundleDirectory(str(folder))
    data_files = sorted(p.name for p in (folder / "Data").iterdir())
    assert {"chi.nrrd", "regions.seg.nrrd", "chi_statistics.tsv"} <= set(data_files)
    loaded = slicer_support.SceneLogics()
    loaded.scene.SetURL(str(folder / "scene.mrml"))
    assert loaded.scene.Connect()
    _check_reloaded(loaded.scene, chi, labels, means)
    # a bundle (.mrb), as "Save scene as MRB"
    bundle = tmp_path / "scene.mrb"
    assert scene.WriteToMRB(str(bundle))
    from_bundle = slicer_support.SceneLogics()
    from_bundle.enable_mrb(tmp_path / "cache")
    assert from_bundle.scene.ReadFromMRB(str(bundle))
    _check_reloaded(from_bundle.scene, chi, labels, means)


# --- chi-separation parts beside the total (issue 14) ----------------------------------------------

def _parts(known):
    """chi_pos and chi_neg volumes with known values per region (the total's split is not needed here)."""
    context, volume, *_rest = known
    labels = known[4]
    pos = np.zeros(SHAPE, np.float32)
    neg = np.zeros(SHAPE, np.float32)
    pos[labels == 1] = np.linspace(0.0, 0.046, 24, dtype=np.float32)  # mean 0.023
    neg[labels == 1] = -0.004
    pos[labels == 2] = 0.17
    neg[labels == 2] = -0.02
    neg[labels == 3] = -0.05  # a diamagnetic region, no paramagnetic part
    scene = context.scene
    return (nodes.output_volume(scene, "chi_pos", pos, AFFINE), nodes.output_volume(scene, "chi_neg", neg, AFFINE),
            pos, neg)


def test_separation_parts_per_segment_are_exact_and_never_referenced(known, tmp_path):
    from qsmslicer.roi import SEPARATION_COLUMNS

    _context, volume, segmentation, chi, labels, brain, brain_node = known
    chi_pos, chi_neg, pos, neg = _parts(known)
    logic = ROISusceptibilityLogic()
    table = logic.computeStatistics(volume, segmentation, reference="brain", brain_mask=brain_node,
                                    chi_pos=chi_pos, chi_neg=chi_neg)
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert names == [c[0] for c in STATISTICS_COLUMNS] + ["Mean chi_pos", "Mean chi_neg"]
    assert [c[0] for c in SEPARATION_COLUMNS] == ["Mean chi_pos", "Mean chi_neg"]
    assert table.GetColumnUnitLabel("Mean chi_pos") == "ppm" and table.GetColumnUnitLabel("Mean chi_neg") == "ppm"
    assert _column(table, "Mean chi_pos") == pytest.approx([0.023, 0.17, 0.0], abs=1e-7)
    assert _column(table, "Mean chi_neg") == pytest.approx([-0.004, -0.02, -0.05], abs=1e-7)
    # the total is referenced to the brain; the parts are not (R2' fixes their zero)
    brain_mean = chi[brain].astype(np.float64).mean()
    assert _column(table, "Mean")[1] == pytest.approx(0.15 - brain_mean, abs=1e-7)
    assert table.GetAttribute("QSM.ChiPos") == "chi_pos" and table.GetAttribute("QSM.ChiNeg") == "chi_neg"
    # bar plot: the total with its marks, then the two parts as bars on the same rows
    chart = logic.createBarPlot(table)
    assert chart.GetNumberOfPlotSeriesNodes() == 5
    bars, low, high, part_pos, part_neg = (chart.GetNthPlotSeriesNode(n) for n in range(5))
    assert (bars.GetYColumnName(), low.GetYColumnName(), high.GetYColumnName()) == ("Mean", "Mean - SD", "Mean + SD")
    for series, column in ((part_pos, "Mean chi_pos"), (part_neg, "Mean chi_neg")):
        assert series.GetTableNode() is table and series.GetYColumnName() == column
        assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
        assert series.GetLabelColumnName() == "Segment" and series.GetXColumnName() == ""
    assert "chi_pos" in chart.GetTitle()
    # CSV: the new columns, with units in the schema
    path = logic.exportCsv(table, tmp_path / "parts.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["Mean chi_pos"]) == pytest.approx(0.023, abs=1e-7)
    assert float(rows[2]["Mean chi_neg"]) == pytest.approx(-0.05, abs=1e-7)
    schema = (tmp_path / "parts.schema.csv").read_text()
    assert "Mean chi_pos" in schema and "Mean chi_neg" in schema
    # recomputed without the parts, into the same table: the columns go, the plot has 3 series again
    logic.computeStatistics(volume, segmentation, table=table)
    assert table.GetNumberOfColumns() == len(STATISTICS_COLUMNS)
    assert logic.createBarPlot(table, chart).GetNumberOfPlotSeriesNodes() == 3


def test_separation_parts_must_come_in_pairs_on_the_maps_voxels(known):
    context, volume, segmentation, *_rest = known
    chi_pos, chi_neg, pos, _neg = _parts(known)
    logic = ROISusceptibilityLogic()
    with pytest.raises(QSMInputError, match="both chi_pos and chi_neg"):
        logic.computeStatistics(volume, segmentation, chi_pos=chi_pos)
    elsewhere = nodes.output_volume(context.scene, "moved", pos, AFFINE @ np.diag([2.0, 1, 1, 1]))
    with pytest.raises(QSMInputError, match="same voxels"):
        logic.computeStatistics(volume, segmentation, chi_pos=elsewhere, chi_neg=chi_neg)
    parameters = logic.getParameterNode()
    parameters.susceptibility, parameters.segmentation, parameters.chiPos = volume, segmentation, chi_pos
    assert logic.missingInputs(parameters) == "Select both chi_pos and chi_neg, or neither"
    parameters.chiNeg = chi_neg
    assert logic.missingInputs(parameters) == ""
    table = logic.processParameterNode(parameters)
    assert _column(table, "Mean chi_neg") == pytest.approx([-0.004, -0.02, -0.05], abs=1e-7)
