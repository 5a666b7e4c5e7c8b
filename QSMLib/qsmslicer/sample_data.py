"""The simulated multi-echo head as Slicer sample data, loadable by URI like any other sample.

Nothing is downloaded. The head is simulated from the phantom shipped in qsmlib
(3 T, five echoes of 4-28 ms, SNR 100, seed 0) and written once into Slicer's
cache folder as two sequence files, magnitude and phase, indexed by EchoTime in
ms. The Sample Data module loads them through their ``file://`` URIs, so
``SampleData.SampleDataLogic().downloadSample(name)`` works from scripts and
self-tests as for any sample; the Sample Data button also selects them as the
inputs of QSM Reconstruction.

The 2 mm head is written when the sample is registered and the file is missing
(about 5 s, once per qsmlib version) if qsmlib's packages are installed; the
1 mm head, and the 2 mm one otherwise, on the first click of its button or a
call of :func:`ensure_sample_files`.
"""

import functools
import inspect
import os
from pathlib import Path

import slicer

import qsmlib
from qsmslicer import dependencies, nodes

CATEGORY = "QSM"
#: Sample name -> isotropic voxel size (mm).
VOXEL_SIZES_MM = {"QSMSimulatedHead2mm": 2.0, "QSMSimulatedHead1mm": 1.0}
#: Written when the sample is registered (the others on first use).
GENERATED_AT_REGISTRATION = ("QSMSimulatedHead2mm",)
SERIES = ("Magnitude", "Phase")
SEED = 0


def sample_folder():
    """Where the sample files live: ``<Slicer cache>/SlicerQSM/sample-data-<qsmlib version>``."""
    return Path(slicer.app.cachePath) / "SlicerQSM" / f"sample-data-{qsmlib.__version__}"


def sample_files(name):
    """The magnitude and phase sequence files of a sample."""
    return [sample_folder() / f"{name}_{series}.seq.nrrd" for series in SERIES]


def simulated_head(voxel_size_mm, b0_dir=None, seed=SEED):
    """The qsmlib simulation of the head (a SimulatedGRE with its ground truth); the samples use seed 0."""
    from qsmlib.simulation import load_head_phantom, simulate_gre

    return simulate_gre(load_head_phantom(voxel_size_mm), b0_dir=b0_dir, seed=seed)


def add_echo_volumes(scene, head, series):
    """One scalar volume per echo of ``series`` ("Magnitude" or "Phase") of a simulated head."""
    data = head.magnitude if series == "Magnitude" else head.phase
    return nodes.echo_volumes(scene, data, head.affine, f"SimulatedHead_{series}")


def add_echo_sequence(scene, head, series):
    """A sequence of the echoes of ``series``, indexed by EchoTime in ms."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"SimulatedHead_{series}")
    sequence.SetIndexName("EchoTime")
    sequence.SetIndexUnit("ms")
    for volume, te in zip(add_echo_volumes(scene, head, series), head.te_s):
        sequence.SetDataNodeAtValue(volume, f"{1000 * te:g}")
        scene.RemoveNode(volume.GetDisplayNode())
        scene.RemoveNode(volume)
    return sequence


def ensure_sample_files(name):
    """Write the sample's sequence files if they are missing; returns their paths.

    The simulation runs in a scene of its own (the user's scene is not
    touched) and each file is written under a temporary name, then renamed,
    so a file that exists is complete.
    """
    paths = sample_files(name)
    if all(path.is_file() for path in paths):
        return paths
    sample_folder().mkdir(parents=True, exist_ok=True)
    scene = slicer.vtkMRMLScene()
    head = simulated_head(VOXEL_SIZES_MM[name])
    for series, path in zip(SERIES, paths):
        sequence = add_echo_sequence(scene, head, series)
        partial = path.with_name(f".{os.getpid()}-{path.name}")
        storage = slicer.vtkMRMLVolumeSequenceStorageNode()
        storage.SetFileName(str(partial))
        storage.SetUseCompression(True)
        if not storage.WriteData(sequence):
            raise OSError(f"could not write the sample file {partial}; check that {sample_folder()} is writable")
        os.replace(partial, path)
    scene.Clear(1)
    return paths


def register(thumbnail, loader):
    """Add the samples to the Sample Data module (once; a module reload does not add them twice).

    ``loader(source, name)`` is what the sample's button does.
    """
    import SampleData

    registered = {source.sampleName for source in SampleData.SampleDataLogic.sampleDataSourcesByCategory(CATEGORY)}
    for name in VOXEL_SIZES_MM:
        if name in registered:
            continue
        if name in GENERATED_AT_REGISTRATION and not dependencies.missing_packages():
            ensure_sample_files(name)
        paths = sample_files(name)
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=name, thumbnailFileName=str(thumbnail),
            uris=[path.as_uri() for path in paths], fileNames=[path.name for path in paths],
            nodeNames=[f"{name}_{series}" for series in SERIES], customDownloader=functools.partial(loader, name=name),
            **{_file_type_keyword(): ["SequenceFile"] * len(paths)})


def _file_type_keyword():
    """Slicer 5.8 renamed registerCustomSampleDataSource's ``loadFileType`` to ``loadFileTypes``."""
    import SampleData

    parameters = inspect.signature(SampleData.SampleDataLogic.registerCustomSampleDataSource).parameters
    return "loadFileTypes" if "loadFileTypes" in parameters else "loadFileType"


def load(name):
    """Load a sample through the Sample Data module (writing its files first if needed).

    Returns ``[magnitude sequence, phase sequence]``, browsed together by one
    sequence browser.
    """
    import SampleData

    dependencies.ensure_packages_in_slicer("QSM sample data")
    ensure_sample_files(name)
    logic = SampleData.SampleDataLogic()
    loaded = logic.downloadFromSource(logic.sourceForSampleName(name))
    if len(loaded) != len(SERIES) or not all(hasattr(node, "IsA") and node.IsA("vtkMRMLSequenceNode")
                                             for node in loaded):
        raise RuntimeError(f"sample {name}: Slicer did not load its sequence files ({loaded})")
    browse_together(*loaded)
    return loaded


def browse_together(magnitude, phase):
    """One sequence browser plays both sequences: the magnitude's, and the phase's own is removed."""
    scene = magnitude.GetScene()
    browsers = [scene.GetNthNodeByClass(n, "vtkMRMLSequenceBrowserNode")
                for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode"))]
    browser = next((b for b in browsers if b.GetMasterSequenceNode() is magnitude), None)
    if browser is None:
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", scene.GenerateUniqueName("SimulatedHead"))
        browser.SetAndObserveMasterSequenceNodeID(magnitude.GetID())
    for own in [b for b in browsers if b.GetMasterSequenceNode() is phase]:
        proxy = own.GetProxyNode(phase)
        scene.RemoveNode(own)
        if proxy is not None:
            scene.RemoveNode(proxy)
    if not browser.IsSynchronizedSequenceNode(phase.GetID(), True):
        browser.AddSynchronizedSequenceNode(phase)
    slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
    return browser


def head_tissues(voxel_size_mm):
    """The simulated head's tissues: label -> qsmlib Tissue (name, susceptibility, R2*, ...)."""
    from qsmlib.simulation import load_head_phantom

    return load_head_phantom(voxel_size_mm).tissues
