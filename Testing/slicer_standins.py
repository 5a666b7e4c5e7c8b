"""Stand-ins for Slicer's Python layer, for the fast suite (CI has no copy of Slicer's source).

``make slicer-check`` runs the same tests on Slicer's real ``parameterNodeWrapper``,
``ScriptedLoadableModule``, ``i18n``, ``SampleData`` and ``slicer.util`` of every
supported release. These stand-ins are written here from those files'
documented behaviour and reject what the OLDEST supported release (5.6)
rejects, so that the fast suite fails where a user's Slicer would:

- a parameter bound to a ``qMRMLNodeComboBox`` must name concrete node
  classes (Slicer instantiates each to fill ``nodeTypes``, so an abstract
  class raises TypeError); the combo box's ``nodeTypes`` becomes the
  annotation's;
- a widget can only be bound to the types 5.6 has a connector for (no
  ``ctkDoubleSpinBox``, ``ctkComboBox``, ``ctkCheckBox`` or ``QLabel``
  connectors, for example); a combo box needs a ``Choice``;
- ``connectGui`` returns None (5.6 and 5.8 do), so a Widget must keep the tag of
  ``connectParametersToGui`` to disconnect; ``disconnectGui`` leaves the
  ModifiedEvent observer in place, as 5.6-5.8 do;
- values are validated (``Choice``, ``WithinRange``, node types) and stored in
  the real ``vtkMRMLScriptedModuleNode``, so they survive scene save and load;
- ``SampleDataLogic.downloadSample`` ignores ``customDownloader`` and loads
  only what the source's URIs give, through ``slicer.app.coreIOManager()``.
"""

import enum
import logging
import os
import pathlib
import sys
import types
import typing
import unittest
import urllib.request

import slicer
import vtk

# ---------------------------------------------------------------------------------------------
# slicer.i18n

def tr(text):
    return slicer.app.translate("", text)


def translate(context, text):
    return slicer.app.translate(context, text)


# ---------------------------------------------------------------------------------------------
# slicer.parameterNodeWrapper

class Validator:
    def validate(self, value):
        raise NotImplementedError


class Choice(Validator):
    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value '{value}' is not in the set of choices {self.choices}")


class WithinRange(Validator):
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value {value} is not within range [{self.minimum}, {self.maximum}]")


class Minimum(Validator):
    def __init__(self, minimum):
        self.minimum = minimum

    def validate(self, value):
        if value < self.minimum:
            raise ValueError(f"Value {value} is below the minimum {self.minimum}")


class Maximum(Validator):
    def __init__(self, maximum):
        self.maximum = maximum

    def validate(self, value):
        if value > self.maximum:
            raise ValueError(f"Value {value} is above the maximum {self.maximum}")


class Default:
    def __init__(self, value):
        self.value = value


def _split(annotated):
    if typing.get_origin(annotated) is typing.Annotated:
        args = typing.get_args(annotated)
        return args[0], list(args[1:])
    return annotated, []


def _is_node_class(candidate):
    return isinstance(candidate, type) and issubclass(candidate, slicer.vtkMRMLNode)


def _node_classes(base):
    """The node classes of a node type or a Union of node types (and None); None if not a node type."""
    if _is_node_class(base):
        return [base]
    if typing.get_origin(base) is typing.Union:
        args = typing.get_args(base)
        classes = [a for a in args if _is_node_class(a)]
        if classes and all(_is_node_class(a) or a is type(None) for a in args):
            return classes
    return None


class _Parameter:
    """One typed parameter: how it is stored in the scripted-module node, validated and defaulted."""

    def __init__(self, name, annotated, default):
        base, annotations = _split(annotated)
        self.name, self.annotated, self.base = name, annotated, base
        self.validators = [a for a in annotations if isinstance(a, Validator)]
        defaults = [a for a in annotations if isinstance(a, Default)]
        self.optional = typing.get_origin(base) is typing.Union and type(None) in typing.get_args(base)
        self.node_classes = _node_classes(base)
        self.list_of_nodes = (typing.get_origin(base) is list and len(typing.get_args(base)) == 1
                              and _is_node_class(typing.get_args(base)[0]))
        if self.node_classes is None and not self.list_of_nodes and base not in (str, int, float, bool) and not (
                isinstance(base, type) and issubclass(base, (enum.Enum, pathlib.PurePath))):
            raise Exception(f"Unable to create serializer for member {name} of type {base}")
        if default is not _NO_DEFAULT:
            self.default = default
        elif defaults:
            self.default = defaults[0].value
        elif self.node_classes is not None:
            self.default = None
        elif self.list_of_nodes:
            self.default = []
        elif isinstance(base, type) and issubclass(base, enum.Enum):
            self.default = next(iter(base))
        else:
            self.default = base()
        if self.node_classes is not None and self.default is not None:
            raise ValueError(f"{name}: a node parameter defaults to None")
        if self.node_classes is None and not self.list_of_nodes:
            self.validate(self.default)

    def validate(self, value):
        if self.node_classes is not None:
            if value is not None and not isinstance(value, tuple(self.node_classes)):
                raise ValueError(f"{self.name}: {type(value).__name__} is not one of "
                                 f"{[c.__name__ for c in self.node_classes]}")
            return
        if self.list_of_nodes:
            node_class = typing.get_args(self.base)[0]
            for item in value:
                if not isinstance(item, node_class):
                    raise ValueError(f"{self.name}: {type(item).__name__} is not a {node_class.__name__}")
            return
        if self.base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.base):
            raise TypeError(f"{self.name}: expected {self.base.__name__}, got {type(value).__name__}")
        for validator in self.validators:
            validator.validate(value)

    # -- storage in the vtkMRMLScriptedModuleNode ---------------------------------------------------

    def is_in(self, node):
        if self.node_classes is not None or self.list_of_nodes:
            return node.GetAttribute(f"QSMStandIn.{self.name}") == "set"
        return node.GetParameterNames() is not None and self.name in list(node.GetParameterNames())

    def write(self, node, value):
        self.validate(value)
        if self.node_classes is not None:
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            node.SetAttribute(f"QSMStandIn.{self.name}", "set")
        elif self.list_of_nodes:
            was = node.StartModify()
            node.RemoveNodeReferenceIDs(self.name)
            for item in value:
                node.AddNodeReferenceID(self.name, item.GetID())
            node.SetAttribute(f"QSMStandIn.{self.name}", "set")
            node.EndModify(was)
        elif isinstance(self.base, type) and issubclass(self.base, enum.Enum):
            node.SetParameter(self.name, value.name)
        else:
            node.SetParameter(self.name, str(value))

    def read(self, node):
        if self.node_classes is not None:
            return node.GetNodeReference(self.name)
        if self.list_of_nodes:
            return [node.GetNthNodeReference(self.name, i) for i in range(node.GetNumberOfNodeReferences(self.name))]
        text = node.GetParameter(self.name)
        if self.base is bool:
            return text == "True"
        if isinstance(self.base, type) and issubclass(self.base, enum.Enum):
            return self.base[text]
        return self.base(text)


_NO_DEFAULT = object()


def parameterNodeWrapper(classtype=None):
    """Typed properties over a vtkMRMLScriptedModuleNode, bindable to widgets (see the module docstring)."""

    def wrap(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        parameters = {}
        for name, annotated in hints.items():
            parameters[name] = _Parameter(name, annotated, cls.__dict__.get(name, _NO_DEFAULT))
            setattr(cls, name, _parameter_property(name))
        cls.allParameters = parameters
        cls._is_parameter_node_wrapper = True
        cls.__init__ = _init
        for method in (getValue, setValue, default, dataType, connectGui, connectParametersToGui, disconnectGui,
                       AddObserver, RemoveObserver, StartModify, EndModify, Modified):
            setattr(cls, method.__name__, method)
        return cls

    return wrap if classtype is None else wrap(classtype)


def isParameterNodeWrapper(obj):
    return getattr(obj, "_is_parameter_node_wrapper", False)


def _parameter_property(name):
    return property(lambda self: self.getValue(name), lambda self, value: self.setValue(name, value))


def _init(self, parameterNode):
    self.parameterNode = parameterNode
    self._guis = {}
    self._nextTag = 0
    self._updatingGui = False
    was = parameterNode.StartModify()
    for parameter in self.allParameters.values():
        if not parameter.is_in(parameterNode):
            parameter.write(parameterNode, parameter.default)
    parameterNode.EndModify(was)


def _check_name(self, name):
    if name not in self.allParameters:
        raise ValueError(f"Cannot find a param with the given name: {name}")


def getValue(self, name):
    _check_name(self, name)
    return self.allParameters[name].read(self.parameterNode)


def setValue(self, name, value):
    _check_name(self, name)
    self.allParameters[name].write(self.parameterNode, value)


def default(self, name):
    _check_name(self, name)
    return Default(self.allParameters[name].default)


def dataType(self, name):
    _check_name(self, name)
    return self.allParameters[name].annotated


def AddObserver(self, event, callback, priority=0.0):
    return self.parameterNode.AddObserver(event, callback, priority)


def RemoveObserver(self, tag):
    self.parameterNode.RemoveObserver(tag)


def StartModify(self):
    return self.parameterNode.StartModify()


def EndModify(self, wasModified):
    return self.parameterNode.EndModify(wasModified)


def Modified(self):
    self.parameterNode.Modified()


def connectGui(self, gui):
    """Bind every widget with a SlicerParameterName; returns None, as Slicer 5.6 and 5.8 do."""
    mapping = {}
    if getattr(gui, "isWidgetType", lambda: False)():
        widgets = gui.findChildren(sys.modules["qt"].QWidget)
    else:
        widgets = vars(gui).values()
    for widget in widgets:
        name = widget.property("SlicerParameterName")
        if name:
            mapping[name] = widget
    self.connectParametersToGui(mapping)


def connectParametersToGui(self, mapping):
    for name in mapping:
        _check_name(self, name)
    connectors = {name: _connector(widget, self.allParameters[name]) for name, widget in mapping.items()}
    tag = self._nextTag
    self._nextTag += 1
    self._guis[tag] = connectors
    for name, connector in connectors.items():
        connector.write(self.getValue(name))
        connector.connect(_gui_to_parameter(self, name, connector))
    self.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: _parameters_to_gui(self))
    return tag


def disconnectGui(self, tag):
    if tag in self._guis:
        for connector in self._guis.pop(tag).values():
            connector.disconnect()


def _gui_to_parameter(self, name, connector):
    def callback(*args):
        if not self._updatingGui:
            self.setValue(name, connector.read())
    return callback


def _parameters_to_gui(self):
    if self._updatingGui:
        return
    self._updatingGui = True
    try:
        for connectors in self._guis.values():
            for name, connector in connectors.items():
                connector.write(self.getValue(name))
    finally:
        self._updatingGui = False


class _Connector:
    def __init__(self, widget, parameter, signal, read, write):
        self.widget, self.parameter, self.signal_name = widget, parameter, signal
        self.read, self.write = read, write
        self.slot = None

    def connect(self, slot):
        self.slot = slot
        getattr(self.widget, self.signal_name).connect(slot)

    def disconnect(self):
        getattr(self.widget, self.signal_name).disconnect(self.slot)


def _connector(widget, parameter):
    """The connector Slicer 5.6 would make for this widget class and type, or its RuntimeError."""
    qt, ctk = sys.modules["qt"], sys.modules["ctk"]
    kind, base = type(widget), parameter.base
    bounded = any(isinstance(v, WithinRange) for v in parameter.validators) or (
        any(isinstance(v, Minimum) for v in parameter.validators)
        and any(isinstance(v, Maximum) for v in parameter.validators))
    ranges = [v for v in parameter.validators if isinstance(v, WithinRange)]
    if base is bool and kind in (qt.QCheckBox, qt.QPushButton):
        if kind is qt.QPushButton:
            widget.checkable = True
        return _Connector(widget, parameter, "toggled", lambda: widget.checked, lambda v: setattr(widget, "checked", v))
    if base is int and kind in (qt.QSpinBox, qt.QSlider):
        if kind is qt.QSlider and not bounded:
            raise RuntimeError("Cannot have a connection to QSlider where the int type is unbounded.")
        widget.setRange(*(ranges[0].minimum, ranges[0].maximum) if ranges else (-(2 ** 31), 2 ** 31 - 1))
        return _Connector(widget, parameter, "valueChanged", lambda: widget.value,
                          lambda v: setattr(widget, "value", v))
    if base is float and kind in (qt.QDoubleSpinBox, ctk.ctkSliderWidget, slicer.qMRMLSliderWidget):
        if kind is not qt.QDoubleSpinBox and not bounded:
            raise RuntimeError("Cannot have a connection to ctkSliderWidget where the float types is unbounded.")
        widget.minimum, widget.maximum = (ranges[0].minimum, ranges[0].maximum) if ranges else (
            float("-inf"), float("inf"))
        return _Connector(widget, parameter, "valueChanged", lambda: widget.value,
                          lambda v: setattr(widget, "value", v))
    if kind is qt.QComboBox and (base in (int, float, str, bool) or (
            isinstance(base, type) and issubclass(base, enum.Enum))):
        if isinstance(base, type) and issubclass(base, enum.Enum):
            choices = list(base)
            labels = [getattr(base, "label", lambda e: e.name)(e) for e in choices]
        else:
            found = [v for v in parameter.validators if isinstance(v, Choice)]
            if not found:
                raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
            choices = found[0].choices
            labels = [str(c) for c in choices]
        widget.clear()
        for label in labels:
            widget.addItem(label)

        def write(value):
            for index, choice in enumerate(choices):
                if choice == value:
                    widget.currentIndex = index
                    return
            raise ValueError(f"Unable to find value {value} in choices {choices}")
        return _Connector(widget, parameter, "currentIndexChanged", lambda: choices[widget.currentIndex], write)
    if base is str and kind is qt.QLineEdit:
        return _Connector(widget, parameter, "textChanged", lambda: widget.text,
                          lambda v: None if v == widget.text else setattr(widget, "text", v))
    if base is str and kind is qt.QTextEdit:
        return _Connector(widget, parameter, "textChanged", widget.toPlainText, widget.setPlainText)
    if parameter.node_classes is not None and kind is slicer.qMRMLNodeComboBox:
        # Slicer fills nodeTypes by instantiating each class: an abstract class raises TypeError here.
        widget.nodeTypes = tuple(node_class().GetClassName() for node_class in parameter.node_classes)
        return _Connector(widget, parameter, "currentNodeChanged", widget.currentNode, widget.setCurrentNode)
    if isinstance(base, type) and issubclass(base, pathlib.PurePath) and kind in (
            ctk.ctkPathLineEdit, ctk.ctkDirectoryButton):
        attribute = "currentPath" if kind is ctk.ctkPathLineEdit else "directory"
        signal = "currentPathChanged" if kind is ctk.ctkPathLineEdit else "directoryChanged"
        return _Connector(widget, parameter, signal, lambda: base(getattr(widget, attribute)),
                          lambda v: setattr(widget, attribute, str(v)))
    raise RuntimeError(f"Unable to create GUI connector from datatype '{parameter.annotated}' "
                       f"to widget type '{kind}'")


# ---------------------------------------------------------------------------------------------
# slicer.ScriptedLoadableModule

class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        module = sys.modules[self.__module__]
        test_case = getattr(module, self.moduleName + "Test")()
        test_case.messageDelay = msec
        test_case.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__[:-len("Widget")]
        self.developerMode = False
        self.parent = parent
        self.layout = parent.layout()

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def cleanup(self):
        pass

    def setup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__[:-len("Logic")]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)

    def runTest(self):
        names = [name for name in dir(self) if "test" in name and callable(getattr(self, name))]
        for name in names:
            self.setUp()
            getattr(self, name)()
            self.tearDown()


# ---------------------------------------------------------------------------------------------
# SampleData

class SampleDataSource:
    def __init__(self, sampleName=None, uris=None, fileNames=None, nodeNames=None, checksums=None,
                 loadFiles=None, customDownloader=None, thumbnailFileName=None, loadFileType=None,
                 loadFileProperties=None):
        if isinstance(uris, str):
            uris, fileNames, nodeNames = [uris], [fileNames], [nodeNames]
            checksums = [checksums]
        uris = list(uris or [])
        nodeNames = list(nodeNames) if nodeNames is not None else [None] * len(uris)
        fileNames = list(fileNames) if fileNames is not None else [None] * len(uris)
        checksums = list(checksums) if checksums is not None else [None] * len(uris)
        if not len(uris) == len(fileNames) == len(nodeNames) == len(checksums):
            raise ValueError("All fields of sample data source must have the same length")
        self.sampleName, self.uris, self.fileNames, self.nodeNames = sampleName, uris, fileNames, nodeNames
        self.checksums, self.customDownloader, self.thumbnailFileName = checksums, customDownloader, thumbnailFileName
        if isinstance(loadFileType, str) or loadFileType is None:
            loadFileType = [loadFileType] * len(uris)
        self.loadFileType = list(loadFileType)
        self.loadFiles = list(loadFiles) if loadFiles else [None] * len(uris)
        self.loadFileProperties = dict(loadFileProperties or {})


class SampleDataLogic:
    _sources = {}

    @staticmethod
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                       nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                       loadFileType="VolumeFile", loadFiles=None, loadFileProperties=None,
                                       checksums=None):
        """Slicer 5.6's signature (``loadFileType``; 5.8 renamed it ``loadFileTypes``)."""
        source = SampleDataSource(sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                                  checksums=checksums, loadFiles=loadFiles, customDownloader=customDownloader,
                                  thumbnailFileName=thumbnailFileName, loadFileType=loadFileType,
                                  loadFileProperties=loadFileProperties)
        SampleDataLogic._sources.setdefault(category, []).append(source)

    @staticmethod
    def sampleDataSourcesByCategory(category=None):
        """The sources of a category; for None, the dict of every category's sources (as Slicer's)."""
        if category is None:
            return SampleDataLogic._sources
        return SampleDataLogic._sources.get(category, [])

    def sourceForSampleName(self, sampleName):
        for sources in SampleDataLogic._sources.values():
            for source in sources:
                if source.sampleName == sampleName:
                    return source
        return None

    def downloadFromSource(self, source):
        """What Slicer's does for volume and sequence files: fetch each URI into the cache, load it by name."""
        loaded = []
        cache = slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory()
        for uri, file_name, node_name, file_type in zip(source.uris, source.fileNames, source.nodeNames,
                                                        source.loadFileType):
            path = os.path.join(cache, file_name)
            if not os.path.exists(path) or os.stat(path).st_size == 0:
                try:
                    urllib.request.urlretrieve(uri, path)
                except OSError:
                    logging.error("Download failed: %s", uri)
                    continue
            collection = vtk.vtkCollection()
            properties = {"fileName": path, "name": node_name}
            manager = slicer.app.coreIOManager()
            if manager.loadNodes(file_type or manager.fileType(path), properties, collection):
                loaded.append(collection.GetItemAsObject(0))
        return loaded

    def downloadSamples(self, sampleName):
        source = self.sourceForSampleName(sampleName)
        return self.downloadFromSource(source) if source is not None else []

    def downloadSample(self, sampleName):
        return self.downloadSamples(sampleName)[0]


def install():
    """Register the stand-ins as slicer.i18n, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule, SampleData."""
    modules = {
        "slicer.i18n": {"tr": tr, "translate": translate},
        "slicer.parameterNodeWrapper": {name: globals()[name] for name in (
            "parameterNodeWrapper", "isParameterNodeWrapper", "Choice", "WithinRange", "Minimum", "Maximum",
            "Default", "Validator")},
        "slicer.ScriptedLoadableModule": {name: globals()[name] for name in (
            "ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
            "ScriptedLoadableModuleTest")},
        "SampleData": {"SampleDataLogic": SampleDataLogic, "SampleDataSource": SampleDataSource},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        module.__all__ = list(attributes)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
