"""Echo series held once: volume nodes that show one 4D array, read by the Logic as it is (issue 15's memory).

``qsmslicer.nodes.echo_series`` makes one scalar volume per echo whose voxels
are a view of an (i, j, k, echo) array; ``echo_series_array`` then gives the
Logic that array instead of stacking a copy of the nodes. The web app loads
its inputs this way. The known answers: the nodes' voxels equal the array's
echoes and share its memory; the Logic gives the same maps, voxel for voxel,
as on per-echo copies; no 4D copy is allocated; a node given other voxels is
read from the node again.
"""

import gc
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

SHAPE = (24, 20, 16, 3)


@pytest.fixture(scope="module")
def head():
    """The 3 mm simulated head, its per-echo copies in one scene and echo series in another."""
    import slicer

    from qsmlib.io.phase_scaling import phase_to_radians
    from qsmslicer import nodes
    from qsmslicer.reconstruction import ReconstructionLogic

    copies_scene, series_scene = slicer.vtkMRMLScene(), slicer.vtkMRMLScene()
    magnitude, phase, truth = ReconstructionLogic().addSimulatedHead(scene=copies_scene, voxel_size_mm=3.0)
    phase_rad, scaling = phase_to_radians(truth.phase)
    series = (nodes.echo_series(series_scene, truth.magnitude, truth.affine, "Magnitude"),
              nodes.echo_series(series_scene, phase_rad, truth.affine, "Phase", phase_scaling=scaling))
    return {"copies": (magnitude, phase), "series": series, "truth": truth,
            "scenes": (copies_scene, series_scene)}  # a node's scene must live as long as the node is used


def _random_array(seed=0):
    return np.random.default_rng(seed).uniform(-3, 3, SHAPE).astype(np.float32)


def test_the_nodes_show_the_arrays_echoes_without_a_copy():
    import slicer

    from qsmslicer import nodes

    scene = slicer.vtkMRMLScene()
    values = _random_array()
    affine = np.array([[-1.5, 0, 0, 10], [0, 1.2, 0, -4], [0, 0, 2.0, 7], [0, 0, 0, 1]])
    series = nodes.echo_series(scene, values, affine, "Phase")
    assert [node.GetName() for node in series] == ["Phase_e1", "Phase_e2", "Phase_e3"]
    assert series.array.flags.f_contiguous and series.array.dtype == np.float32
    for echo, node in enumerate(series):
        np.testing.assert_array_equal(nodes.array_from_volume(node), values[..., echo])
        np.testing.assert_allclose(nodes.ijk_to_ras(node), affine)
        assert np.shares_memory(slicer.util.arrayFromVolume(node), series.array)
    assert nodes.echo_series_array(series, "phase")[0] is series.array
    # the stacked copy of plain per-echo nodes holds the same voxels
    stacked, reference = nodes.echo_series_array(list(series), "phase")
    assert stacked is not series.array and reference is series[0]
    np.testing.assert_array_equal(stacked, values)


def test_the_voxels_outlive_the_series_object():
    import slicer

    from qsmslicer import nodes

    scene = slicer.vtkMRMLScene()
    values = _random_array(1)
    ids = [node.GetID() for node in nodes.echo_series(scene, values, np.eye(4), "Magnitude")]
    gc.collect()
    overwritten = [np.full(SHAPE, 7.0, np.float32) for _ in range(8)]  # reuse of freed memory would show
    for echo, node_id in enumerate(ids):
        np.testing.assert_array_equal(nodes.array_from_volume(scene.GetNodeByID(node_id)), values[..., echo])
    assert len(overwritten) == 8


def test_a_node_given_other_voxels_is_read_from_the_node():
    import slicer
    import vtk

    from qsmslicer import nodes

    scene = slicer.vtkMRMLScene()
    values = _random_array(2)
    series = nodes.echo_series(scene, values, np.eye(4), "Phase", phase_scaling={"detected": "radians"})
    image = vtk.vtkImageData()
    image.DeepCopy(series[1].GetImageData())
    series[1].SetAndObserveImageData(image)
    nodes.update_volume_from_array(series[1], values[..., 1] / 2)
    assert not series.shows_array()
    stacked, _ = nodes.echo_series_array(series, "phase")
    assert stacked is not series.array
    np.testing.assert_array_equal(stacked[..., 1], values[..., 1] / 2)
    np.testing.assert_array_equal(stacked[..., 0], values[..., 0])
    # the scaling no longer describes those voxels: they are converted again
    phase_rad, scaling, _ = nodes.phase_series_radians(series)
    assert scaling["detected"] == "radians in [-pi, pi]" and phase_rad is not series.array


def test_reading_a_series_allocates_no_copy_of_the_echoes(head):
    from qsmslicer import nodes

    def peak_bytes(read):
        gc.collect()
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    magnitude, phase = head["series"]
    one_series = magnitude.array.nbytes
    held_once = peak_bytes(lambda: (nodes.echo_series_array(magnitude, "magnitude"),
                                    nodes.phase_series_radians(phase)))
    stacked = peak_bytes(lambda: (nodes.echo_series_array(list(magnitude), "magnitude"),
                                  nodes.phase_series_radians(list(phase))))
    assert held_once < one_series / 20, (held_once, one_series)
    assert stacked > 2 * one_series, (stacked, one_series)


def test_the_logic_gives_the_same_maps_from_a_series_and_leaves_it_unchanged(head):
    from qsmslicer import nodes
    from qsmslicer.reconstruction import ReconstructionLogic
    from qsmslicer.swi import SwiLogic

    truth = head["truth"]
    magnitude, phase = head["series"]
    before = magnitude.array.copy(), phase.array.copy()
    settings = {"te_s": list(truth.te_s), "b0_t": float(truth.b0_t), "preset": "fast"}
    from_copies = ReconstructionLogic().process(*head["copies"], **settings)
    from_series = ReconstructionLogic().process(magnitude, phase, **settings)
    for name in ("susceptibility", "local_field", "total_field", "mask"):
        np.testing.assert_array_equal(nodes.array_from_volume(getattr(from_series, name)),
                                      nodes.array_from_volume(getattr(from_copies, name)), err_msg=name)
    assert (from_series.provenance["detected"]["phase_scaling"]
            == from_copies.provenance["detected"]["phase_scaling"])
    swi_copies = SwiLogic().process(*head["copies"], te_s=list(truth.te_s))
    swi_series = SwiLogic().process(magnitude, phase, te_s=list(truth.te_s))
    for name in ("swi", "mip"):  # float32 sums in the other memory order: equal to rounding
        np.testing.assert_allclose(nodes.array_from_volume(getattr(swi_series, name)),
                                   nodes.array_from_volume(getattr(swi_copies, name)), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    np.testing.assert_array_equal(magnitude.array, before[0])
    np.testing.assert_array_equal(phase.array, before[1])


def test_the_web_app_loads_nifti_files_as_series_with_the_phase_in_radians(tmp_path):
    import slicer

    from qsmlib.phase import wrap_to_pi
    from qsmlib.web import inputs
    from qsmlib.web.runner import copy_echoes

    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    raw = np.random.default_rng(3).integers(0, 4096, SHAPE).astype(np.int16)  # 12-bit unsigned phase
    raw[0, 0, 0, 0], raw[-1, -1, -1, -1] = 0, 4095
    nib.save(nib.Nifti1Image(raw, affine), tmp_path / "phase.nii.gz")
    scene = slicer.vtkMRMLScene()
    series, got_affine = inputs.load_echo_nodes(scene, tmp_path / "phase.nii.gz", "phase", "Phase")
    np.testing.assert_allclose(got_affine, affine)
    assert series.phase_scaling["detected"] == "12-bit unsigned integers (0..4095)"
    expected = wrap_to_pi(raw.astype(np.float64) * 2 * np.pi / 4096 - np.pi)
    np.testing.assert_allclose(series.array, expected, atol=2e-6)
    # a run's private copies keep the one array
    copies = copy_echoes(series, slicer.vtkMRMLScene())
    assert copies.array is series.array and copies.phase_scaling is series.phase_scaling
    assert [c.GetImageData() for c in copies] == [n.GetImageData() for n in series]
