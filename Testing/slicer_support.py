"""Glue for testing the Slicer modules against slicer-core (real MRML, no Qt).

Everything MRML is real: the scene, nodes, storage nodes and logics come from
the slicer-core wheel. Only what needs the Qt application stands in here, at
import time, and only where slicer-core does not provide it:

- ``qt`` and ``ctk``: empty modules (only Widgets use them, and Widgets are not run);
- ``slicer.ScriptedLoadableModule``: the four base classes, with no behaviour;
- ``slicer.parameterNodeWrapper``: the decorator returns the class unchanged;
  the validators are inert markers;
- ``slicer.i18n``: ``tr`` and ``translate`` return the text;
- ``SampleData`` (a scripted module of full Slicer), only where a test asks for
  it: :func:`sample_data_stand_in` records the sample data sources registered.
"""

import sys
import types
from pathlib import Path

import slicer
import slicer.util

REPO = Path(__file__).resolve().parents[1]
QSM_DIR = REPO / "QSM"
MODULE_DIRS = [QSM_DIR / "QSMCommon", QSM_DIR / "QSMReconstruction", QSM_DIR / "ROISusceptibility",
               QSM_DIR / "SWI"]


def _stand_in(name, **attributes):
    if name in sys.modules:
        return sys.modules[name]
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


class _Base:
    def __init__(self, parent=None):
        self.parent = parent


class _Marker:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def install_stand_ins():
    """Put the Qt-side stand-ins in place (a no-op inside real Slicer)."""
    _stand_in("qt")
    _stand_in("ctk")
    _stand_in("slicer.ScriptedLoadableModule", ScriptedLoadableModule=_Base, ScriptedLoadableModuleWidget=_Base,
              ScriptedLoadableModuleLogic=_Base, ScriptedLoadableModuleTest=_Base)
    _stand_in("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls, WithinRange=_Marker,
              Choice=_Marker, Default=_Marker, Minimum=_Marker, Maximum=_Marker)
    _stand_in("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    for folder in MODULE_DIRS:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


#: Every SceneLogics made in this session: logics must outlive the tests that use their scene.
_ALIVE = []


class SceneLogics:
    """A real MRML scene with the logics that full Slicer attaches to it.

    The colour logic adds the default colour tables (labelmaps need them); the
    segmentations logic registers the segment representation converters.
    """

    def __init__(self):
        _ALIVE.append(self)
        self.scene = slicer.vtkMRMLScene()
        self.application = slicer.vtkMRMLApplicationLogic()
        self.application.SetMRMLScene(self.scene)
        self.logics = [self.application]
        for logic_class in (slicer.vtkSlicerColorLogic, slicer.vtkSlicerSegmentationsModuleLogic,
                            slicer.vtkSlicerTablesLogic, slicer.vtkSlicerSequencesLogic):
            logic = logic_class()
            logic.SetMRMLApplicationLogic(self.application)
            logic.SetMRMLScene(self.scene)
            self.logics.append(logic)
        slicer.mrmlScene = self.scene

    def enable_mrb(self, cache_dir):
        """Give the scene the data I/O manager that reading a .mrb bundle needs."""
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(str(cache_dir))
        io_manager = slicer.vtkDataIOManager()
        io_manager.SetCacheManager(cache)
        self.scene.SetCacheManager(cache)
        self.scene.SetDataIOManager(io_manager)
        self.logics += [cache, io_manager]


class SampleDataRegistry:
    """Records ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` calls.

    The keywords are those of Slicer's function. Like Slicer's SampleDataSource,
    it refuses a source whose URIs are not a list or string, or whose URI, file
    name and node name lists differ in length, so a registration that would
    fail in Slicer fails here.
    """

    def __init__(self):
        self.sources = []

    def registerCustomSampleDataSource(self, category="Custom", sampleName=None, uris=None, fileNames=None,
                                       nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                       loadFileTypes=None, loadFiles=None, loadFileProperties=None,
                                       checksums=None):
        if isinstance(uris, str):
            uris, fileNames, nodeNames = [uris], [fileNames], [nodeNames]
        if not isinstance(uris, (list, tuple)):
            raise TypeError("SampleDataSource needs uris as a list or a string")
        nodeNames = [None] * len(uris) if nodeNames is None else nodeNames
        if fileNames is None or not len(uris) == len(fileNames) == len(nodeNames):
            raise ValueError("All fields of sample data source must have the same length")
        self.sources.append({"category": category, "sampleName": sampleName, "uris": list(uris),
                             "thumbnailFileName": thumbnailFileName, "customDownloader": customDownloader})

    def sampleDataSourcesByCategory(self, category=None):
        """The registered sources of ``category`` (objects with ``sampleName``), as Slicer's logic gives them."""
        return [types.SimpleNamespace(**s) for s in self.sources if category is None or s["category"] == category]


def sample_data_stand_in():
    """A ``SampleData`` module whose ``SampleDataLogic`` records registrations; put it in sys.modules."""
    registry = SampleDataRegistry()
    module = types.ModuleType("SampleData")
    module.SampleDataLogic = registry
    return module, registry


install_stand_ins()
