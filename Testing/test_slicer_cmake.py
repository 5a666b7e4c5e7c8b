"""Static checks of the Slicer extension: CMake lists every module file, modules follow the template."""

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QSM_DIR = REPO / "QSM"
MODULES = ("QSMReconstruction", "SWI", "ROISusceptibility")
PACKAGED_SUFFIXES = (".py", ".ui", ".png")


def _cmake_listed(cmake_file, module_name):
    text = cmake_file.read_text()
    text = re.sub(r"#[^\n]*", "", text).replace("${MODULE_NAME}", module_name)
    return set(re.findall(r"[\w./-]+\.(?:py|ui|png)\b", text))


def _module_files(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.suffix in PACKAGED_SUFFIXES and "__pycache__" not in p.parts}


def test_every_module_is_added_and_the_extension_adds_qsm():
    top = re.sub(r"#[^\n]*", "", (REPO / "CMakeLists.txt").read_text())
    assert re.search(r"add_subdirectory\(\s*QSM\s*\)", top)
    added = set(re.findall(r"add_subdirectory\(\s*(\w+)\s*\)", re.sub(r"#[^\n]*", "", (QSM_DIR / "CMakeLists.txt").read_text())))
    with_cmake = {p.parent.name for p in QSM_DIR.glob("*/CMakeLists.txt")}
    assert added == with_cmake
    assert set(MODULES) <= added


def test_qsmlib_and_qsmslicer_are_installed_with_every_python_file():
    # the Slicer glue is the second package of the qsmlib distribution, installed next to qsmlib
    cmake = re.sub(r"#[^\n]*", "", (REPO / "QSMLib" / "CMakeLists.txt").read_text())
    for package in ("qsmlib", "qsmslicer"):
        assert re.search(rf"file\(GLOB_RECURSE \w+ RELATIVE \$\{{CMAKE_CURRENT_SOURCE_DIR\}} {package}/\*\.py\)", cmake)
        assert re.search(rf"slicerMacroBuildScriptedModule\(\s*NAME {package}\s", cmake)
        assert (REPO / "QSMLib" / package / "__init__.py").is_file()
    assert '"qsmslicer*"' in (REPO / "QSMLib" / "pyproject.toml").read_text()


def test_icon_and_screenshot_urls_point_to_images_in_the_repository():
    top = (REPO / "CMakeLists.txt").read_text()
    urls = []
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        value = re.search(key + r'\s+"([^"]+)"', top).group(1)
        urls += value.split()
    assert len(urls) >= 2
    for url in urls:
        path = REPO / url.split("/main/", 1)[1]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in QSM_DIR.glob("*/CMakeLists.txt")))
def test_cmake_lists_every_file_of_the_module(folder):
    directory = QSM_DIR / folder
    listed = _cmake_listed(directory / "CMakeLists.txt", folder)
    present = _module_files(directory)
    assert present, folder
    assert present == listed, {"not listed": present - listed, "listed but missing": listed - present}
    assert "slicerMacroBuildScriptedModule" in (directory / "CMakeLists.txt").read_text()


def _mixin_class():
    tree = ast.parse((REPO / "QSMLib" / "qsmslicer" / "widget.py").read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ParameterNodeWidgetMixin")


#: Mixin methods a Widget is meant to override.
MIXIN_HOOKS = {"onParameterNodeModified", "parameterNodeConnecting"}


def test_shared_widget_mixin_keeps_the_tag_it_disconnects_with():
    # connectGui returns None before Slicer 5.10; connectParametersToGui returns the tag in every release
    source = ast.unparse(_mixin_class())
    assert "self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(" in source
    assert "disconnectGui(self._parameterNodeGuiTag)" in source and "StartCloseEvent" in source
    assert ".connectGui(" not in source


def test_each_module_registers_its_self_test_with_ctest_and_declares_its_dependencies():
    for module in MODULES:
        cmake = re.sub(r"#[^\n]*", "", (QSM_DIR / module / "CMakeLists.txt").read_text())
        assert re.search(r"if\(BUILD_TESTING\)\s*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", cmake)
        tree = ast.parse((QSM_DIR / module / f"{module}.py").read_text())
        init = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__init__")
        declared = next(ast.literal_eval(n.value) for n in ast.walk(init) if isinstance(n, ast.Assign)
                        and ast.unparse(n.targets[0]) == "self.parent.dependencies")
        assert declared, module
        source = (QSM_DIR / module / f"{module}.py").read_text()
        uses = {"Sequences": "vtkMRMLSequence", "SampleData": "SampleData", "Tables": "vtkMRMLTableNode",
                "Plots": "vtkMRMLPlot", "Segmentations": "vtkMRMLSegmentationNode"}
        for dependency, marker in uses.items():
            if marker in source:
                assert dependency in declared, (module, dependency)


def test_extension_metadata_follows_the_current_template_and_the_catalog_entry():
    top = re.sub(r"#[^\n]*", "", (REPO / "CMakeLists.txt").read_text())
    minimum, maximum = re.search(r"cmake_minimum_required\(VERSION ([\d.]+)\.\.\.([\d.]+) FATAL_ERROR\)", top).groups()
    assert minimum == "3.16.3" and maximum == "3.28.0"  # Slicer 5.6/5.8's CMake .. the 5.12 template's policies
    assert "EXTENSION_CATEGORY" not in top  # the category lives in the catalog entry since Slicer 5.8
    entry = json.loads((REPO / "Resources" / "ExtensionsIndex" / "SlicerQSM.json").read_text())
    assert entry["category"] == "Quantification"
    assert entry["scm_url"].endswith(".git") and entry["$schema"].startswith(
        "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-")
    assert set(entry) <= {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                          "build_subdirectory", "tier", "enabled"}


@pytest.mark.parametrize("module", MODULES)
def test_module_follows_the_template_and_the_widget_does_not_compute(module):
    path = QSM_DIR / module / f"{module}.py"
    tree = ast.parse(path.read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for suffix in ("", "Widget", "Logic", "Test", "ParameterNode"):
        assert module + suffix in classes, f"{module}{suffix} missing"
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in classes[module + "ParameterNode"].decorator_list)
    widget = ast.unparse(classes[module + "Widget"])
    for forbidden in ("np.", "qsmlib", "reconstruct(", "qsm_swi.", "array_from_volume"):
        assert forbidden not in widget, f"{module}Widget uses {forbidden}"
    assert "tryWithErrorDisplay" in widget
    # the template's parameter-node scaffolding comes from the shared mixin, listed first so it wins
    bases = [ast.unparse(b) for b in classes[module + "Widget"].bases]
    assert bases[0] == "ParameterNodeWidgetMixin" and "ScriptedLoadableModuleWidget" in bases, bases
    own = {n.name for n in classes[module + "Widget"].body if isinstance(n, ast.FunctionDef)}
    shared = {n.name for n in _mixin_class().body if isinstance(n, ast.FunctionDef)} - MIXIN_HOOKS
    assert not own & shared, f"{module}Widget repeats {own & shared}"
    assert "connectScene" in widget and "_checkCanApply" in own
    ui = (QSM_DIR / module / "Resources" / "UI" / f"{module}.ui").read_text()
    bound = set(re.findall(r'name="SlicerParameterName"[^>]*>\s*<string>(\w+)</string>', ui))
    parameters = {node.target.id for node in classes[module + "ParameterNode"].body if isinstance(node, ast.AnnAssign)}
    assert bound and bound <= parameters, bound - parameters
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]
