"""The Slicer modules compute with the thread count of Slicer's own (ITK) processing, on real MRML.

The count is read from ITK's global default number of threads through the real
SimpleITK; the checks sample qsmlib's thread count and the BLAS pools' sizes
while the Logic runs (from its progress callback, or a spy around qsmlib.swi.swi).
"""

import json

import pytest
import SimpleITK
from threadpoolctl import threadpool_info

import slicer_support  # noqa: F401  (stand-ins for the Qt side, module paths)
import qsmlib
from qsmlib import QSMInputError, parallel
from qsmslicer import threads as slicer_threads
from QSMReconstruction import QSMReconstructionLogic


@pytest.fixture
def itk_threads():
    """Sets ITK's global default number of threads (Slicer's own setting) for one test, then restores it."""
    before = SimpleITK.ProcessObject.GetGlobalDefaultNumberOfThreads()
    qsmlib.set_threads(None)
    yield SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads
    SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


@pytest.fixture(scope="module")
def head():
    scene = slicer_support.SceneLogics().scene
    magnitude, phase, truth = QSMReconstructionLogic().addSimulatedHead(scene, voxel_size_mm=4.0)
    return scene, magnitude, phase, truth


def _sampled_run(head, **kwargs):
    """Run the Logic; return its outputs and the (qsmlib threads, BLAS pool sizes) seen at each progress call."""
    scene, magnitude, phase, truth = head
    seen = []

    def progress(stage, fraction):
        seen.append((qsmlib.get_threads(), tuple(pool["num_threads"] for pool in threadpool_info())))

    outputs = QSMReconstructionLogic().process(magnitude, phase, te_s=truth.te_s, b0_t=truth.b0_t, preset="fast",
                                               progress=progress, **kwargs)
    assert len(seen) >= 5
    return outputs, seen


def test_reconstruction_runs_with_slicer_itk_thread_count_and_records_it(head, itk_threads):
    default = parallel.thread_info()
    blas_before = tuple(pool["num_threads"] for pool in threadpool_info())
    for count in (1, 3):
        itk_threads(count)
        assert slicer_threads.slicer_thread_count() == count
        outputs, seen = _sampled_run(head)
        assert set(seen) == {(count, (count,) * len(blas_before))}
        provenance = json.loads(outputs.susceptibility.GetAttribute("QSM.Provenance"))
        assert provenance["threads"] == {"count": count, "source": slicer_threads.SOURCE}
    # the setting ends with the run
    assert parallel.thread_info() == default
    assert tuple(pool["num_threads"] for pool in threadpool_info()) == blas_before


def test_a_count_given_to_the_logic_wins_and_a_bad_one_is_refused(head, itk_threads):
    itk_threads(3)
    outputs, seen = _sampled_run(head, threads=2)
    assert {threads for threads, _blas in seen} == {2}
    provenance = json.loads(outputs.susceptibility.GetAttribute("QSM.Provenance"))
    assert provenance["threads"] == {"count": 2, "source": "given to the Logic"}
    scene = head[0]
    before = scene.GetNumberOfNodes()
    for bad in (0, -1, "x"):
        with pytest.raises(QSMInputError, match="is not a thread count"):
            _sampled_run(head, threads=bad)
    assert scene.GetNumberOfNodes() == before


def test_swi_runs_with_slicer_itk_thread_count(head, itk_threads, monkeypatch):
    import SWI

    scene, magnitude, phase, truth = head
    real_swi, seen = SWI.qsm_swi.swi, []

    def spy(*args, **kwargs):
        seen.append(qsmlib.get_threads())
        return real_swi(*args, **kwargs)

    monkeypatch.setattr(SWI.qsm_swi, "swi", spy)
    itk_threads(1)
    SWI.SWILogic().process(magnitude, phase, te_s=truth.te_s)
    assert seen == [1]
    assert parallel.thread_info()["source"] != "set_threads"
