"""Run the Slicer modules here: real MRML from slicer-core, Slicer's Python layer, a fake Qt.

What is real and what is not:

- MRML (scenes, nodes, storage, the segmentation, sequence, table, plot and
  colour logics) is the real C++ library of the slicer-core wheel;
- Qt is the fake of :mod:`fake_qt` (PythonQt itself cannot be installed here);
- Slicer's Python layer (``slicer.util``, ``slicer.i18n``,
  ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``,
  ``slicer.packaging``, ``SampleData``) is read from a Slicer source tree when
  the environment variable ``SLICER_PYTHON_SOURCE`` names one (a folder with
  ``Base/Python/slicer`` and ``Modules/Scripted/SampleData`` of one release;
  ``make slicer-check`` extracts each supported tag and sets it). Without it, the
  fast suite uses slicer-core's ``slicer.util`` and the strict stand-ins of
  :mod:`slicer_standins`.

Importing this module sets everything up once per process.
"""

import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path

import slicer

import fake_qt

REPO = Path(__file__).resolve().parents[1]
QSM_DIR = REPO / "QSM"
#: What Slicer puts on sys.path: the scripted modules' folders, and the one where qsmlib and qsmslicer are installed.
MODULE_DIRS = [REPO / "QSMLib", QSM_DIR / "QSMReconstruction", QSM_DIR / "ROISusceptibility", QSM_DIR / "SWI"]
#: The scripted modules of the extension: name -> folder.
MODULES = {"QSMReconstruction": QSM_DIR / "QSMReconstruction", "SWI": QSM_DIR / "SWI",
           "ROISusceptibility": QSM_DIR / "ROISusceptibility"}

SLICER_PYTHON_SOURCE = os.environ.get("SLICER_PYTHON_SOURCE", "")
#: "real" when Slicer's own Python files are in use, "stand-in" otherwise.
MODE = "real" if SLICER_PYTHON_SOURCE else "stand-in"
CACHE = Path(tempfile.mkdtemp(prefix="qsm-slicer-cache-"))


def _load_file(name, path, package_dir=None):
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(package_dir)] if package_dir else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    spec.loader.exec_module(module)
    return module


def _install_slicer_python(source):
    """Slicer's own Python layer of one release, from its source tree."""
    base = Path(source) / "Base" / "Python" / "slicer"
    sample_data = Path(source) / "Modules" / "Scripted" / "SampleData" / "SampleData.py"
    for required in (base / "util.py", base / "i18n.py", base / "ScriptedLoadableModule.py",
                     base / "parameterNodeWrapper" / "__init__.py", sample_data):
        if not required.is_file():
            raise RuntimeError(f"SLICER_PYTHON_SOURCE={source}: {required} is missing")
    _load_file("slicer.util", base / "util.py")
    _load_file("slicer.i18n", base / "i18n.py")
    if (base / "packaging.py").is_file():
        _load_file("slicer.packaging", base / "packaging.py")
    _load_file("slicer.parameterNodeWrapper", base / "parameterNodeWrapper" / "__init__.py",
               base / "parameterNodeWrapper")
    _load_file("slicer.ScriptedLoadableModule", base / "ScriptedLoadableModule.py")
    _load_file("SampleData", sample_data)


def _install():
    app = fake_qt.install(CACHE)
    if not hasattr(slicer, "modules"):
        slicer.modules = types.SimpleNamespace()
    if MODE == "real":
        _install_slicer_python(SLICER_PYTHON_SOURCE)
    else:
        import slicer_standins

        slicer_standins.install()
    for folder in MODULE_DIRS:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return app


APP = _install()


#: Every SceneLogics made in this session: logics must outlive the tests that use their scene.
_ALIVE = []


class SceneLogics:
    """A real MRML scene with the logics that full Slicer attaches to it, made the application's scene.

    The colour logic adds the default colour tables (labelmaps need them); the
    segmentations logic registers the segment representation converters; the
    sequences logic reads sequence files; the plots logic shows charts.
    """

    def __init__(self):
        _ALIVE.append(self)
        self.scene = slicer.vtkMRMLScene()
        self.application = slicer.vtkMRMLApplicationLogic()
        self.application.SetMRMLScene(self.scene)
        self.logics = [self.application]
        self.by_class = {}
        for logic_class in (slicer.vtkSlicerColorLogic, slicer.vtkSlicerSegmentationsModuleLogic,
                            slicer.vtkSlicerTablesLogic, slicer.vtkSlicerSequencesLogic, slicer.vtkSlicerPlotsLogic):
            logic = logic_class()
            logic.SetMRMLApplicationLogic(self.application)
            logic.SetMRMLScene(self.scene)
            self.logics.append(logic)
            self.by_class[logic_class.__name__] = logic
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(str(CACHE / "remote"))
        io_manager = slicer.vtkDataIOManager()
        io_manager.SetCacheManager(cache)
        self.scene.SetCacheManager(cache)
        self.scene.SetDataIOManager(io_manager)
        self.logics += [cache, io_manager]
        (CACHE / "remote").mkdir(exist_ok=True)
        slicer.mrmlScene = self.scene
        APP._fake_application_logic = self.application
        APP._fake_sequences_logic = self.by_class["vtkSlicerSequencesLogic"]
        plots = self.by_class["vtkSlicerPlotsLogic"]
        slicer.modules.plots = types.SimpleNamespace(logic=lambda: plots)
        slicer.modules.sequences = types.SimpleNamespace(logic=lambda: APP._fake_sequences_logic)

    def enable_mrb(self, cache_dir):
        """Point the scene's cache at ``cache_dir`` (reading a .mrb bundle unpacks there)."""
        self.scene.GetCacheManager().SetRemoteCacheDirectory(str(cache_dir))


class LoadedModule:
    """One scripted module as Slicer holds it: the module object, its panel and Widget."""

    def __init__(self, name):
        module = __import__(name)
        self.python_module = module
        self.qt_module = fake_qt.qSlicerScriptedLoadableModule()
        self.qt_module.path = str(MODULES[name] / f"{name}.py")
        self.module = getattr(module, name)(self.qt_module)
        setattr(slicer.modules, name.lower(), self.qt_module)
        self.panel = None
        self.widget = None

    def open_panel(self):
        """What Slicer does when the module is first shown: the Widget in its panel, ``setup()``, ``enter()``."""
        self.panel = fake_qt.qSlicerScriptedLoadableModuleWidget()
        self.panel.setLayout(fake_qt.QVBoxLayout())
        self.widget = getattr(self.python_module, self.module.moduleName + "Widget")(self.panel)
        self.widget.setup()
        self.enter()
        return self.widget

    def enter(self):
        self.panel.isEntered = True
        self.widget.enter()

    def exit(self):
        self.widget.exit()
        self.panel.isEntered = False

    def unload(self):
        APP.moduleManager().moduleAboutToBeUnloaded.emit(self.module.moduleName)
