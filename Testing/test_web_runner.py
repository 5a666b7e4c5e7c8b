"""qsm web's runs off the server thread: one job class (runner.LogicJob) for every Logic call.

The SWI job runs ``SwiLogic().process`` on copies of the echoes in a worker
thread: its outputs must be the Logic's, called directly on the same nodes.
"""

import threading

import numpy as np


def _sample_nodes():
    import slicer

    from qsmslicer.reconstruction import ReconstructionLogic

    scene = slicer.vtkMRMLScene()
    magnitude, phase, head = ReconstructionLogic().addSimulatedHead(scene=scene, voxel_size_mm=2.0)
    return scene, magnitude, phase, head


def test_the_swi_job_gives_swilogics_result_on_copies_in_a_worker_thread():
    import slicer

    from qsmlib.web.runner import swi_job
    from qsmslicer import nodes
    from qsmslicer.swi import SwiLogic

    scene, magnitude, phase, head = _sample_nodes()
    expected = SwiLogic().process(magnitude, phase, te_s=list(head.te_s))
    count = scene.GetNumberOfNodes()
    job = swi_job(magnitude, phase, {"te_s": list(head.te_s)})
    done = threading.Event()
    job.start(lambda _text, _percent: None, lambda _job: done.set())
    assert done.wait(60)
    assert job.error is None and not job.cancelled
    assert job.thread is not threading.current_thread()
    app_scene = slicer.vtkMRMLScene()
    copies = job.copy_outputs(app_scene)
    job.release()
    assert sorted(copies) == ["mip", "swi"]
    assert scene.GetNumberOfNodes() == count  # the inputs' scene got nothing: the job worked on copies
    for key in ("swi", "mip"):
        got = nodes.array_from_volume(copies[key])
        want = nodes.array_from_volume(getattr(expected, key))
        assert got.shape == want.shape == head.chi_ppm.shape
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(nodes.ijk_to_ras(copies[key]), nodes.ijk_to_ras(getattr(expected, key)))
    swi = nodes.array_from_volume(copies["swi"])
    assert float(swi.std()) > 0 and np.all(np.isfinite(swi))


def test_a_job_cancelled_before_it_starts_calls_nothing():
    from qsmlib.web.runner import LogicJob

    _scene, magnitude, phase, _head = _sample_nodes()
    calls = []
    job = LogicJob(lambda **kwargs: calls.append(kwargs), {"magnitude": magnitude}, {"te_s": [0.01]}, ("swi",),
                   takes_progress=False)
    job.cancel()
    done = threading.Event()
    job.start(lambda _text, _percent: None, lambda _job: done.set())
    assert done.wait(10)
    assert job.cancelled and calls == [] and job.error is None
    job.release()


def test_a_copied_volume_shares_the_voxels_and_outlives_its_source():
    import slicer

    from qsmlib.web.runner import copy_volume
    from qsmslicer import nodes

    scene, magnitude, _phase, head = _sample_nodes()
    source = magnitude[0]
    other = slicer.vtkMRMLScene()
    copy = copy_volume(source, other)
    assert copy.GetScene() is other and copy.GetName() == source.GetName()
    # one voxel buffer for both nodes: the copy holds no second array
    assert copy.GetImageData() is source.GetImageData()
    np.testing.assert_allclose(nodes.ijk_to_ras(copy), nodes.ijk_to_ras(source))
    scene.RemoveNode(source)
    scene.Clear(1)
    np.testing.assert_array_equal(nodes.array_from_volume(copy), head.magnitude[..., 0])
