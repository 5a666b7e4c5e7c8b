"""A fake of the Qt side of 3D Slicer (PythonQt ``qt``, ``ctk``, the qMRML widgets, ``slicer.app``).

Slicer's own Python layer (``parameterNodeWrapper``, ``ScriptedLoadableModule``,
``SampleData``, ``slicer.util``) and the MRML library (slicer-core) are real in
the tests; only Qt is not installable here. This fake behaves like Qt where the
modules depend on it and fails where Qt fails:

- widgets are the exact classes Slicer's GUI connectors test with ``type(w) ==``;
- reading or writing an attribute the real class lacks raises AttributeError;
- signals fire as in Qt: ``QComboBox.clear``/``addItem``/``setCurrentText``
  change the current index and emit, setters emit only on a change, spin boxes
  clamp and round to their decimals;
- string connections (``w.connect("clicked(bool)", slot)``) must name a signal
  the class has, with its exact signature; slots get as many arguments as they
  accept, as PythonQt does;
- ``qMRMLNodeComboBox`` lists only nodes of its ``nodeTypes`` in its scene,
  picks the first one when None is not allowed, and drops a removed node;
- ``.ui`` files are read by :class:`QUiLoader` (widgets, layouts, properties,
  dynamic properties, and the ``<connections>`` section; an MRML widget gets
  a scene only through such a connection, as in Slicer).
"""

import inspect
import sys
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path


# ---------------------------------------------------------------------------------------------
# Signals

class Signal:
    """A bound signal: ``connect``, ``disconnect``, ``emit`` (PythonQt's API)."""

    def __init__(self, owner, name, signatures):
        self.owner, self.name, self.signatures = owner, name, tuple(signatures)
        self._slots = []

    def connect(self, slot):
        if not callable(slot):
            raise TypeError(f"{self.name}.connect: {slot!r} is not callable")
        self._slots.append(slot)
        return True

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
            return True
        for index, connected in enumerate(self._slots):
            if connected == slot:
                del self._slots[index]
                return True
        return False

    def emit(self, *args):
        for slot in list(self._slots):
            _call_slot(slot, args)

    def __call__(self, *args):
        self.emit(*args)


def _accepted_argument_count(slot):
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in parameters:
        if parameter.kind == parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _call_slot(slot, args):
    """PythonQt passes a Python slot only as many signal arguments as it accepts."""
    count = _accepted_argument_count(slot)
    slot(*(args if count is None else args[:count]))


# ---------------------------------------------------------------------------------------------
# QObject / QWidget

class QObject:
    """Properties are class-declared (``PROPERTIES``), signals too (``SIGNALS``: name -> signatures)."""

    PROPERTIES = {"objectName": ""}
    SIGNALS = {"destroyed": ("destroyed()", "destroyed(QObject*)")}

    def __init__(self, parent=None):
        state = {"properties": {}, "dynamic": {}, "signals": {}, "children": [], "parent": None}
        object.__setattr__(self, "_q", state)
        for klass in reversed(type(self).__mro__):
            for name, default in klass.__dict__.get("PROPERTIES", {}).items():
                state["properties"][name] = default() if callable(default) else default
            for name, signatures in klass.__dict__.get("SIGNALS", {}).items():
                state["signals"][name] = Signal(self, name, signatures)
        if parent is not None:
            self.setParent(parent)

    # -- attribute access as in PythonQt: properties and signals by name, nothing else ---------

    def __getattr__(self, name):
        state = object.__getattribute__(self, "_q")
        if name in state["signals"]:
            return state["signals"][name]
        if name in state["properties"]:
            return state["properties"][name]
        if name == "name":  # PythonQt's alias of objectName
            return state["properties"]["objectName"]
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    def __setattr__(self, name, value):
        if name.startswith("_fake_") or name in type(self).__dict__ or _class_attribute(type(self), name):
            object.__setattr__(self, name, value)
            return
        state = object.__getattribute__(self, "_q")
        if name == "name":
            name = "objectName"
        if name not in state["properties"]:
            raise AttributeError(f"{type(self).__name__} has no property '{name}'")
        setter = getattr(self, "_set_" + name, None)
        if setter is not None:
            setter(value)
        else:
            state["properties"][name] = value

    def _property(self, name):
        return object.__getattribute__(self, "_q")["properties"][name]

    def _store(self, name, value):
        object.__getattribute__(self, "_q")["properties"][name] = value

    def _signal(self, name):
        return object.__getattribute__(self, "_q")["signals"][name]

    # -- Qt API -------------------------------------------------------------------------------

    def objectName_(self):
        return self._property("objectName")

    def setObjectName(self, name):
        self._store("objectName", name)

    def parent(self):
        return object.__getattribute__(self, "_q")["parent"]

    def setParent(self, parent):
        state = object.__getattribute__(self, "_q")
        if state["parent"] is not None:
            state["parent"]._children().remove(self)
        state["parent"] = parent
        if parent is not None:
            parent._children().append(self)

    def _children(self):
        return object.__getattribute__(self, "_q")["children"]

    def children(self):
        return list(self._children())

    def findChildren(self, klass=None):
        found = []
        for child in self._children():
            if klass is None or isinstance(child, klass):
                found.append(child)
            found.extend(child.findChildren(klass))
        return found

    def property(self, name):
        state = object.__getattribute__(self, "_q")
        if name in state["dynamic"]:
            return state["dynamic"][name]
        return state["properties"].get(name)

    def setProperty(self, name, value):
        state = object.__getattribute__(self, "_q")
        if name in state["properties"]:
            setattr(self, name, value)
        else:
            state["dynamic"][name] = value

    def className(self):
        return type(self).__name__

    def isWidgetType(self):
        return False

    def connect(self, signature, slot):
        """PythonQt's string connection: the signature must be one the class declares."""
        name = signature.split("(", 1)[0]
        signals = object.__getattribute__(self, "_q")["signals"]
        if name not in signals or signature.replace(" ", "") not in signals[name].signatures:
            raise AttributeError(f"{type(self).__name__} has no signal '{signature}'")
        return signals[name].connect(slot)

    def disconnect(self, signature, slot=None):
        name = signature.split("(", 1)[0]
        signals = object.__getattribute__(self, "_q")["signals"]
        if name not in signals:
            raise AttributeError(f"{type(self).__name__} has no signal '{signature}'")
        return signals[name].disconnect(slot)

    def deleteLater(self):
        pass

    def blockSignals(self, block):
        return False


def _class_attribute(klass, name):
    return any(name in k.__dict__ for k in klass.__mro__ if k is not QObject and k is not object)


class QWidget(QObject):
    PROPERTIES = {"enabled": True, "visible": True, "toolTip": "", "statusTip": "", "whatsThis": "",
                  "windowTitle": "", "minimumWidth": 0, "maximumWidth": 16777215, "styleSheet": ""}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._fake_layout = None

    def isWidgetType(self):
        return True

    def setLayout(self, layout):
        self._fake_layout = layout
        layout._fake_owner = self

    def layout(self):
        return self._fake_layout

    def show(self):
        self._store("visible", True)

    def hide(self):
        self._store("visible", False)

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setToolTip(self, text):
        self.toolTip = text

    def isEnabled(self):
        return self._property("enabled")

    def isVisible(self):
        return self._property("visible")

    def setSizePolicy(self, *args):
        pass

    def close(self):
        self._store("visible", False)
        return True


class QLayout(QObject):
    def __init__(self, parent=None):
        super().__init__(None)
        self._fake_owner = None
        self._fake_items = []
        if parent is not None:
            parent.setLayout(self)

    def _adopt(self, widget):
        if self._fake_owner is not None and widget is not None and widget.parent() is not self._fake_owner:
            widget.setParent(self._fake_owner)

    def addWidget(self, widget, *args):
        self._fake_items.append(widget)
        self._adopt(widget)

    def addLayout(self, layout, *args):
        self._fake_items.append(layout)
        if self._fake_owner is not None:
            layout._fake_owner = self._fake_owner
            for item in layout._fake_items:
                if isinstance(item, QWidget):
                    layout._adopt(item)

    def addStretch(self, *args):
        pass

    def addItem(self, *args):
        pass

    def count(self):
        return len(self._fake_items)


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QFormLayout(QLayout):
    def addRow(self, *items):
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)
            elif isinstance(item, QLayout):
                self.addLayout(item)


# ---------------------------------------------------------------------------------------------
# Widgets

class QLabel(QWidget):
    PROPERTIES = {"text": "", "wordWrap": False, "textFormat": 0, "alignment": 0, "openExternalLinks": False}

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self._store("text", text)

    def setText(self, text):
        self.text = text


class QAbstractButton(QWidget):
    PROPERTIES = {"text": "", "checkable": False, "checked": False, "icon": None}
    SIGNALS = {"clicked": ("clicked()", "clicked(bool)"), "toggled": ("toggled(bool)",),
               "pressed": ("pressed()",), "released": ("released()",)}

    def __init__(self, text="", parent=None):
        if isinstance(text, QObject):
            text, parent = "", text
        super().__init__(parent)
        self._store("text", text)

    def _set_checked(self, value):
        value = bool(value)
        if not self._property("checkable") or value == self._property("checked"):
            return
        self._store("checked", value)
        self._emit_toggled(value)

    def _emit_toggled(self, value):
        self._signal("toggled").emit(value)

    def setChecked(self, value):
        self.checked = value

    def isChecked(self):
        return self._property("checked")

    def setText(self, text):
        self.text = text

    def click(self):
        """A user click: only an enabled button reacts."""
        if not self._property("enabled"):
            return
        if self._property("checkable"):
            self._set_checked(not self._property("checked"))
        self._signal("clicked").emit(self._property("checked"))


class QPushButton(QAbstractButton):
    PROPERTIES = {"default": False, "flat": False}


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    PROPERTIES = {"checkable": True, "tristate": False}
    SIGNALS = {"stateChanged": ("stateChanged(int)",)}

    def _emit_toggled(self, value):
        self._signal("stateChanged").emit(2 if value else 0)
        self._signal("toggled").emit(value)


class QLineEdit(QWidget):
    PROPERTIES = {"text": "", "placeholderText": "", "readOnly": False, "clearButtonEnabled": False}
    SIGNALS = {"textChanged": ("textChanged(QString)",), "textEdited": ("textEdited(QString)",),
               "editingFinished": ("editingFinished()",), "returnPressed": ("returnPressed()",)}

    def _set_text(self, value):
        value = "" if value is None else str(value)
        if value != self._property("text"):
            self._store("text", value)
            self._signal("textChanged").emit(value)

    def setText(self, value):
        self.text = value

    def setPlaceholderText(self, value):
        self.placeholderText = value

    def type_text(self, value):
        """What a user typing does: textChanged, textEdited and editingFinished."""
        self.text = value
        self._signal("textEdited").emit(value)
        self._signal("editingFinished").emit()


class QTextEdit(QWidget):
    PROPERTIES = {"plainText": "", "readOnly": False, "placeholderText": ""}
    SIGNALS = {"textChanged": ("textChanged()",)}

    def toPlainText(self):
        return self._property("plainText")

    def setPlainText(self, value):
        if value != self._property("plainText"):
            self._store("plainText", value)
            self._signal("textChanged").emit()


class QComboBox(QWidget):
    PROPERTIES = {"currentIndex": -1, "editable": False, "maxVisibleItems": 10, "placeholderText": ""}
    SIGNALS = {"currentIndexChanged": ("currentIndexChanged(int)", "currentIndexChanged(QString)"),
               "currentTextChanged": ("currentTextChanged(QString)",), "activated": ("activated(int)",)}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._fake_items = []

    def __getattr__(self, name):
        if name == "currentText":
            index = self._property("currentIndex")
            return self._fake_items[index][0] if 0 <= index < len(self._fake_items) else ""
        return super().__getattr__(name)

    def __setattr__(self, name, value):
        if name == "currentText":
            self.setCurrentText(value)
        else:
            super().__setattr__(name, value)

    def _set_currentIndex(self, index):
        index = int(index)
        if not -1 <= index < len(self._fake_items):
            index = -1 if not self._fake_items else self._property("currentIndex")
        if index == self._property("currentIndex"):
            return
        self._store("currentIndex", index)
        text = self._fake_items[index][0] if index >= 0 else ""
        self._signal("currentIndexChanged").emit(index)
        self._signal("currentTextChanged").emit(text)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    def addItem(self, text, data=None):
        self._fake_items.append((str(text), data))
        if self._property("currentIndex") == -1:
            self._set_currentIndex(0)

    def addItems(self, texts):
        for text in texts:
            self.addItem(text)

    def clear(self):
        had_items = bool(self._fake_items)
        self._fake_items = []
        if had_items:
            self._store("currentIndex", -1)
            self._signal("currentIndexChanged").emit(-1)
            self._signal("currentTextChanged").emit("")

    def count(self):
        return len(self._fake_items)

    def findText(self, text):
        for index, (item, _data) in enumerate(self._fake_items):
            if item == text:
                return index
        return -1

    def setCurrentText(self, text):
        index = self.findText(text)
        if index >= 0:
            self._set_currentIndex(index)

    def itemText(self, index):
        return self._fake_items[index][0]

    def itemData(self, index):
        return self._fake_items[index][1]

    def currentData(self):
        index = self._property("currentIndex")
        return self._fake_items[index][1] if index >= 0 else None


class QAbstractSpinBox(QWidget):
    PROPERTIES = {"suffix": "", "prefix": "", "readOnly": False, "keyboardTracking": True}


class QSpinBox(QAbstractSpinBox):
    PROPERTIES = {"value": 0, "minimum": 0, "maximum": 99, "singleStep": 1}
    SIGNALS = {"valueChanged": ("valueChanged(int)", "valueChanged(QString)")}

    def _set_value(self, value):
        value = int(min(max(int(round(value)), self._property("minimum")), self._property("maximum")))
        if value != self._property("value"):
            self._store("value", value)
            self._signal("valueChanged").emit(value)

    def _set_minimum(self, value):
        self._store("minimum", int(value))
        if self._property("maximum") < int(value):
            self._store("maximum", int(value))
        self._set_value(self._property("value"))

    def _set_maximum(self, value):
        self._store("maximum", int(value))
        if self._property("minimum") > int(value):
            self._store("minimum", int(value))
        self._set_value(self._property("value"))

    def setRange(self, minimum, maximum):
        self.minimum = minimum
        self.maximum = maximum

    def setMinimum(self, value):
        self.minimum = value

    def setMaximum(self, value):
        self.maximum = value

    def setValue(self, value):
        self.value = value


class QSlider(QSpinBox):
    PROPERTIES = {"orientation": 1}


class QDoubleSpinBox(QAbstractSpinBox):
    """Values are clamped to [minimum, maximum] and rounded to ``decimals``, as in Qt."""

    PROPERTIES = {"value": 0.0, "minimum": 0.0, "maximum": 99.99, "singleStep": 1.0, "decimals": 2}
    SIGNALS = {"valueChanged": ("valueChanged(double)", "valueChanged(QString)")}

    def _round(self, value):
        return round(float(value), int(self._property("decimals")))

    def _set_value(self, value):
        value = min(max(self._round(value), self._property("minimum")), self._property("maximum"))
        if value != self._property("value"):
            self._store("value", value)
            self._signal("valueChanged").emit(value)

    def _set_minimum(self, value):
        value = self._round(value) if value not in (float("inf"), float("-inf")) else float(value)
        self._store("minimum", value)
        if self._property("maximum") < value:
            self._store("maximum", value)
        self._set_value(self._property("value"))

    def _set_maximum(self, value):
        value = self._round(value) if value not in (float("inf"), float("-inf")) else float(value)
        self._store("maximum", value)
        if self._property("minimum") > value:
            self._store("minimum", value)
        self._set_value(self._property("value"))

    def _set_decimals(self, value):
        self._store("decimals", int(value))
        self._set_value(self._property("value"))

    def setRange(self, minimum, maximum):
        self.minimum = minimum
        self.maximum = maximum

    def setValue(self, value):
        self.value = value

    def setDecimals(self, value):
        self.decimals = value


class QProgressDialog(QWidget):
    PROPERTIES = {"value": 0, "minimum": 0, "maximum": 100, "labelText": "", "minimumDuration": 4000,
                  "autoClose": True, "autoReset": True, "wasCanceled": False, "modal": False}
    SIGNALS = {"canceled": ("canceled()",)}

    def cancel(self):
        self._store("wasCanceled", True)
        self._signal("canceled").emit()

    def setValue(self, value):
        self.value = value

    def setLabelText(self, text):
        self.labelText = text


class QMessageBox(QWidget):
    Ok, Cancel, Yes, No = 0x400, 0x400000, 0x4000, 0x10000
    Information, Warning, Critical, Question = 1, 2, 3, 4


class QFileDialog(QWidget):
    #: What the next "Save as" dialog returns; a test sets it, as a user would pick a file.
    next_save_file_name = ""

    @staticmethod
    def getSaveFileName(parent=None, caption="", directory="", filter=""):
        name, QFileDialog.next_save_file_name = QFileDialog.next_save_file_name, ""
        return name

    @staticmethod
    def getExistingDirectory(parent=None, caption="", directory=""):
        return ""


class QMenu(QWidget):
    pass


class QAction(QObject):
    PROPERTIES = {"text": "", "checkable": False, "checked": False, "enabled": True}
    SIGNALS = {"triggered": ("triggered()", "triggered(bool)")}


class QSizePolicy:
    Fixed, Minimum, Maximum, Preferred, Expanding, MinimumExpanding, Ignored = 0, 1, 4, 5, 7, 3, 13

    def __init__(self, *args):
        self.args = args


class QIcon:
    def __init__(self, path=""):
        self.path = str(path)


class QColor:
    def __init__(self, *args):
        self.args = args


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return Path(self.path).is_file()

    def open(self, mode):
        return self.exists()

    def remove(self):
        try:
            Path(self.path).unlink()
        except OSError:
            return False
        return True


class QDir:
    def mkpath(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        return True

    @staticmethod
    def isAbsolutePath(path):
        return Path(path).is_absolute()


class QSettings:
    """Application settings, kept in memory for the session."""

    _store_ = {}

    def value(self, key, default=None):
        return QSettings._store_.get(key, default)

    def setValue(self, key, value):
        QSettings._store_[key] = value

    def contains(self, key):
        return key in QSettings._store_

    def remove(self, key):
        QSettings._store_.pop(key, None)


class QTimer(QObject):
    SIGNALS = {"timeout": ("timeout()",)}

    @staticmethod
    def singleShot(msec, callback):
        callback()


class QUrl:
    TolerantMode = 0

    def __init__(self, url="", mode=0):
        self.url = url


class QDesktopServices:
    @staticmethod
    def openUrl(url):
        return True


class QCursor:
    def __init__(self, shape=0):
        self._shape = shape

    def shape(self):
        return self._shape


class QApplication:
    """Static cursor API; ``slicer.app`` shares the same override-cursor stack."""

    _cursors = []

    @staticmethod
    def setOverrideCursor(cursor):
        QApplication._cursors.append(cursor if isinstance(cursor, QCursor) else QCursor(cursor))

    @staticmethod
    def restoreOverrideCursor():
        if not QApplication._cursors:
            raise RuntimeError("restoreOverrideCursor without setOverrideCursor")
        QApplication._cursors.pop()

    @staticmethod
    def overrideCursor():
        return QApplication._cursors[-1] if QApplication._cursors else None


class Qt:
    WaitCursor, ArrowCursor, BusyCursor = 3, 0, 16
    Unchecked, PartiallyChecked, Checked = 0, 1, 2
    Horizontal, Vertical = 1, 2
    ShiftModifier, NoModifier = 0x02000000, 0
    AlignLeft, AlignRight, AlignCenter = 1, 2, 0x84


# ---------------------------------------------------------------------------------------------
# CTK

class ctkCollapsibleButton(QAbstractButton):
    PROPERTIES = {"collapsed": False, "contentsFrameShape": 0}
    SIGNALS = {"contentsCollapsed": ("contentsCollapsed(bool)",)}


class ctkDoubleSpinBox(QDoubleSpinBox):
    PROPERTIES = {"quantity": "", "unitAwareProperties": 0}


class ctkSliderWidget(QDoubleSpinBox):
    PROPERTIES = {"tracking": True}


class ctkComboBox(QComboBox):
    PROPERTIES = {"defaultText": ""}


class ctkCheckBox(QCheckBox):
    pass


class ctkPathLineEdit(QWidget):
    PROPERTIES = {"currentPath": "", "filters": 0, "nameFilters": list}
    SIGNALS = {"currentPathChanged": ("currentPathChanged(QString)",)}

    def _set_currentPath(self, value):
        # ctkPathLineEdit::setCurrentPath sets its line edit's text; a changed text emits currentPathChanged.
        value = "" if value is None else str(value)
        if value != self._property("currentPath"):
            self._store("currentPath", value)
            self._signal("currentPathChanged").emit(value)

    def setCurrentPath(self, value):
        self.currentPath = value


class ctkDirectoryButton(QWidget):
    PROPERTIES = {"directory": "", "caption": ""}
    SIGNALS = {"directoryChanged": ("directoryChanged(QString)",),
               "directorySelected": ("directorySelected(QString)",)}

    def _set_directory(self, value):
        # ctkDirectoryButton::setDirectory: directorySelected always, directoryChanged only for a new folder
        # (both with the absolute path); the directory property reads back the path as set.
        value = "" if value is None else str(value)
        absolute = str(Path(value).absolute()) if value else ""
        if value != self._property("directory"):
            self._store("directory", value)
            self._signal("directorySelected").emit(absolute)
            self._signal("directoryChanged").emit(absolute)
        else:
            self._signal("directorySelected").emit(absolute)

    def setDirectory(self, value):
        self.directory = value


class ctkCheckablePushButton(QPushButton):
    PROPERTIES = {"checkBoxControlsButtonToggleState": False}


class ctkRangeWidget(QWidget):
    pass


class ctkDoubleRangeSlider(QWidget):
    pass


class ctkDoubleSlider(QDoubleSpinBox):
    pass


class ctkColorPickerButton(QWidget):
    PROPERTIES = {"color": None}
    SIGNALS = {"colorChanged": ("colorChanged(QColor)",)}


# ---------------------------------------------------------------------------------------------
# qMRML widgets (the slicer module's Qt classes)

class qMRMLWidget(QWidget):
    SIGNALS = {"mrmlSceneChanged": ("mrmlSceneChanged(vtkMRMLScene*)",)}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._fake_scene = None

    def setMRMLScene(self, scene):
        if scene is self._fake_scene:
            return
        self._fake_scene = scene
        self._scene_changed()
        self._signal("mrmlSceneChanged").emit(scene)

    def _scene_changed(self):
        pass

    def mrmlScene(self):
        return self._fake_scene


def _scene_nodes(scene, node_types, show_hidden=False):
    if scene is None:
        return []
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if not any(node.IsA(t) for t in node_types):
            continue
        if not show_hidden and node.GetHideFromEditors():
            continue
        if node.GetSingletonTag() and node.IsA("vtkMRMLScriptedModuleNode"):
            continue
        nodes.append(node)
    return nodes


class _SceneObservingWidget(qMRMLWidget):
    """Follows node additions and removals of its scene, as qMRMLSceneModel does."""

    def _scene_changed(self):
        for scene, tags in getattr(self, "_fake_observed", []):
            for tag in tags:
                scene.RemoveObserver(tag)
        self._fake_observed = []
        scene = self._fake_scene
        if scene is not None:
            tags = [scene.AddObserver(scene.NodeAddedEvent, lambda caller, event: self._nodes_changed()),
                    scene.AddObserver(scene.NodeRemovedEvent, lambda caller, event: self._nodes_changed()),
                    scene.AddObserver(scene.EndCloseEvent, lambda caller, event: self._nodes_changed()),
                    scene.AddObserver(scene.EndImportEvent, lambda caller, event: self._nodes_changed())]
            self._fake_observed = [(scene, tags)]
        self._nodes_changed()

    def _nodes_changed(self):
        pass


class qMRMLNodeComboBox(_SceneObservingWidget):
    PROPERTIES = {"nodeTypes": list, "noneEnabled": False, "addEnabled": True, "removeEnabled": True,
                  "renameEnabled": False, "editEnabled": False, "showHidden": False, "showChildNodeTypes": True,
                  "selectNodeUponCreation": True, "noneDisplay": "None", "baseName": "", "currentNodeID": ""}
    SIGNALS = {"currentNodeChanged": ("currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)"),
               "currentNodeIDChanged": ("currentNodeIDChanged(QString)",),
               "nodeAdded": ("nodeAdded(vtkMRMLNode*)",), "nodeActivated": ("nodeActivated(vtkMRMLNode*)",)}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._fake_current = None

    def _set_nodeTypes(self, types_):
        self._store("nodeTypes", [str(t) for t in types_])
        self._nodes_changed()

    def _set_noneEnabled(self, value):
        self._store("noneEnabled", bool(value))
        self._nodes_changed()

    def _set_currentNodeID(self, node_id):
        scene = self._fake_scene
        self.setCurrentNode(scene.GetNodeByID(node_id) if scene is not None and node_id else None)

    def nodes(self):
        return _scene_nodes(self._fake_scene, self._property("nodeTypes"), self._property("showHidden"))

    def currentNode(self):
        return self._fake_current

    def setCurrentNode(self, node):
        """A node this box does not list (wrong type, other scene) leaves it with no selection."""
        if node is not None and not any(node is listed for listed in self.nodes()):
            node = None
        if node is None and not self._property("noneEnabled"):
            listed = self.nodes()
            node = listed[0] if listed and self._fake_current is None else self._fake_current
            if node is not None and not any(node is n for n in listed):
                node = listed[0] if listed else None
        self._select(node)

    def setCurrentNodeID(self, node_id):
        self._set_currentNodeID(node_id)

    def _select(self, node):
        if node is self._fake_current:
            return
        self._fake_current = node
        self._store("currentNodeID", node.GetID() if node is not None else "")
        self._signal("currentNodeChanged").emit(node)
        self._signal("currentNodeIDChanged").emit(self._property("currentNodeID"))

    def _nodes_changed(self):
        listed = self.nodes()
        current = self._fake_current
        if current is not None and not any(current is n for n in listed):
            current = None
        if current is None and not self._property("noneEnabled") and listed:
            current = listed[0]
        self._select(current)

    def addNode(self):
        node = self._fake_scene.AddNewNodeByClass(self._property("nodeTypes")[0])
        self.setCurrentNode(node)
        return node


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    SIGNALS = {"checkedNodesChanged": ("checkedNodesChanged()",)}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._fake_checked = []

    def checkedNodes(self):
        listed = self.nodes()
        return [node for node in listed if any(node is c for c in self._fake_checked)]

    def checkState(self, node):
        return Qt.Checked if any(node is c for c in self._fake_checked) else Qt.Unchecked

    def setCheckState(self, node, state):
        if not any(node is n for n in self.nodes()):
            return
        checked = any(node is c for c in self._fake_checked)
        if (state == Qt.Checked) == checked:
            return
        if state == Qt.Checked:
            self._fake_checked.append(node)
        else:
            self._fake_checked = [c for c in self._fake_checked if c is not node]
        self._signal("checkedNodesChanged").emit()

    def _nodes_changed(self):
        listed = self.nodes()
        kept = [c for c in getattr(self, "_fake_checked", []) if any(c is n for n in listed)]
        changed = len(kept) != len(getattr(self, "_fake_checked", []))
        self._fake_checked = kept
        if changed:
            self._signal("checkedNodesChanged").emit()


class qMRMLSegmentSelectorWidget(_SceneObservingWidget):
    PROPERTIES = {"noneEnabled": False, "editEnabled": False, "segmentationNodeSelectorVisible": True,
                  "multiSelection": False, "horizontalLayout": False, "selectNodeUponCreation": True}
    SIGNALS = {"currentNodeChanged": ("currentNodeChanged(vtkMRMLNode*)",),
               "currentSegmentChanged": ("currentSegmentChanged(QString)",),
               "segmentSelectionChanged": ("segmentSelectionChanged(QStringList)",)}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._fake_node, self._fake_segment = None, ""

    def currentNode(self):
        return self._fake_node

    def setCurrentNode(self, node):
        if node is self._fake_node:
            return
        self._fake_node = node
        self._signal("currentNodeChanged").emit(node)
        segments = node.GetSegmentation() if node is not None else None
        first = segments.GetNthSegmentID(0) if segments is not None and segments.GetNumberOfSegments() else ""
        self.setCurrentSegmentID(first)

    def currentSegmentID(self):
        return self._fake_segment

    def setCurrentSegmentID(self, segment_id):
        node = self._fake_node
        if segment_id and (node is None or node.GetSegmentation().GetSegment(segment_id) is None):
            segment_id = ""
        if segment_id != self._fake_segment:
            self._fake_segment = segment_id
            self._signal("currentSegmentChanged").emit(segment_id)

    def _nodes_changed(self):
        node = self._fake_node
        scene = self._fake_scene
        if node is not None and (scene is None or scene.GetNodeByID(node.GetID()) is not node):
            self.setCurrentNode(None)


class ctkMessageBox(QWidget):
    """A modal message box: records what it showed and answers as the user would (``next_answers``)."""

    PROPERTIES = {"text": "", "icon": 0, "standardButtons": 0, "detailedText": "", "informativeText": "",
                  "dontShowAgainSettingsKey": "", "dontShowAgainVisible": False}
    #: Every box shown: (window title, text).
    shown = []
    #: Answers to give, first in first out; QMessageBox.Ok when empty.
    next_answers = []

    def exec_(self):
        ctkMessageBox.shown.append((self._property("windowTitle"), self._property("text")))
        return ctkMessageBox.next_answers.pop(0) if ctkMessageBox.next_answers else QMessageBox.Ok


class FakeModuleSelector(QObject):
    """The main window's module selector: remembers the modules selected."""

    def __init__(self):
        super().__init__()
        self._fake_selected = []

    def selectModule(self, name):
        self._fake_selected.append(name)

    def selected(self):
        return list(self._fake_selected)


class qSlicerMainWindow(QWidget):
    def __init__(self):
        super().__init__()
        self.setObjectName("qSlicerMainWindow")
        self._fake_selector = FakeModuleSelector()

    def moduleSelector(self):
        return self._fake_selector


class qSlicerScriptedLoadableModule(QObject):
    """The ``parent`` a scripted module's ``__init__`` fills in."""

    PROPERTIES = {"title": "", "categories": list, "dependencies": list, "contributors": list, "helpText": "",
                  "acknowledgementText": "", "icon": None, "path": "", "hidden": False, "index": -1}


class qSlicerScriptedLoadableModuleWidget(qMRMLWidget):
    """The panel a scripted module's Widget lives in; ``isEntered`` follows enter and exit."""

    PROPERTIES = {"isEntered": False}


WIDGET_CLASSES = {klass.__name__: klass for klass in (
    QWidget, QLabel, QPushButton, QToolButton, QCheckBox, QLineEdit, QTextEdit, QComboBox, QSpinBox, QSlider,
    QDoubleSpinBox, QProgressDialog, ctkCollapsibleButton, ctkDoubleSpinBox, ctkSliderWidget, ctkComboBox,
    ctkCheckBox, ctkPathLineEdit, ctkDirectoryButton, ctkCheckablePushButton, ctkRangeWidget,
    ctkDoubleRangeSlider, ctkDoubleSlider, ctkColorPickerButton, qMRMLWidget, qMRMLNodeComboBox,
    qMRMLCheckableNodeComboBox, qMRMLSegmentSelectorWidget)}
LAYOUT_CLASSES = {klass.__name__: klass for klass in (QVBoxLayout, QHBoxLayout, QGridLayout, QFormLayout)}


# ---------------------------------------------------------------------------------------------
# .ui files

class QUiLoader:
    """Builds the fake widgets of a Qt Designer file; unknown widget classes fail to load, as in Slicer."""

    #: (file, widget, property) of every standard property a .ui sets that the fake class lacks.
    unknown_properties = []

    def load(self, qfile, parent=None):
        tree = ElementTree.parse(qfile.path)
        root = tree.getroot().find("widget")
        widgets = {}
        top = self._widget(root, parent, widgets, qfile.path)
        for connection in tree.getroot().iter("connection"):
            sender = widgets[connection.findtext("sender")]
            receiver = widgets[connection.findtext("receiver")]
            slot_name = connection.findtext("slot").split("(", 1)[0]
            sender.connect(connection.findtext("signal"), getattr(receiver, slot_name))
        return top

    def _widget(self, element, parent, widgets, path):
        class_name = element.get("class")
        if class_name not in WIDGET_CLASSES:
            raise RuntimeError(f"{path}: widget class {class_name} is not available")
        widget = WIDGET_CLASSES[class_name](parent)
        widget.setObjectName(element.get("name"))
        widgets[element.get("name")] = widget
        for child in element:
            if child.tag == "property":
                self._set_property(widget, child, path)
            elif child.tag == "layout":
                widget.setLayout(self._layout(child, widget, widgets, path))
            elif child.tag == "widget":
                self._widget(child, widget, widgets, path)
        return widget

    def _layout(self, element, owner, widgets, path):
        layout = LAYOUT_CLASSES[element.get("class")]()
        layout._fake_owner = owner
        for item in element.findall("item"):
            for child in item:
                if child.tag == "widget":
                    layout.addWidget(self._widget(child, owner, widgets, path))
                elif child.tag == "layout":
                    layout.addLayout(self._layout(child, owner, widgets, path))
        return layout

    @staticmethod
    def _value(element):
        value = element[0]
        if value.tag == "string":
            return value.text or ""
        if value.tag == "bool":
            return value.text == "true"
        if value.tag == "number":
            return int(value.text)
        if value.tag == "double":
            return float(value.text)
        if value.tag == "stringlist":
            return [s.text or "" for s in value.findall("string")]
        return value.text

    def _set_property(self, widget, element, path):
        name, value = element.get("name"), self._value(element)
        if element.get("stdset") == "0":
            widget.setProperty(name, value)
            return
        try:
            setattr(widget, name, value)
        except AttributeError:
            QUiLoader.unknown_properties.append((path, widget.objectName_(), name))


# ---------------------------------------------------------------------------------------------
# The application object

class FakeModuleManager(QObject):
    SIGNALS = {"moduleAboutToBeUnloaded": ("moduleAboutToBeUnloaded(QString)",)}


class FakeIOManager:
    """``slicer.app.coreIOManager()`` for the file types the sample data uses.

    Loads with the real MRML storage nodes and logics of slicer-core:
    ``SequenceFile`` (.seq.nrrd) through vtkSlicerSequencesLogic, ``VolumeFile``
    (.nrrd, .nii, .nii.gz) through a volume archetype storage node. Other types
    fail, as a Slicer without the reader would.
    """

    def __init__(self, app):
        self.app = app

    def fileType(self, path):
        name = str(path).lower()
        if name.endswith((".seq.nrrd", ".seq.nhdr")):
            return "SequenceFile"
        if name.endswith((".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")):
            return "VolumeFile"
        return "NoFile"

    def loadNodes(self, file_type, properties, loaded=None):
        """As Slicer's readers: a sequence file gives the sequence and a browser showing it."""
        import slicer

        path = properties["fileName"]
        scene = slicer.mrmlScene
        node = None
        extra = []
        if file_type == "SequenceFile":
            logic = self.app.sequences_logic()
            node = logic.AddSequence(str(path), None) if logic is not None else None
            if node is not None and properties.get("name"):
                node.SetName(scene.GenerateUniqueName(properties["name"]))
            if node is not None and properties.get("show", True):
                browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{node.GetName()} browser")
                browser.SetAndObserveMasterSequenceNodeID(node.GetID())
                logic.UpdateProxyNodesFromSequences(browser)
                extra.append(browser)
        elif file_type == "VolumeFile":
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(str(path))
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", properties.get("name") or Path(path).stem)
            if not storage.ReadData(node):
                scene.RemoveNode(node)
                node = None
            else:
                scene.AddNode(storage)
                node.SetAndObserveStorageNodeID(storage.GetID())
                node.CreateDefaultDisplayNodes()
        if node is None:
            return False
        if loaded is not None:
            for item in [node] + extra:
                loaded.AddItem(item)
        return True


class FakeApplication(QObject):
    """``slicer.app``: signals, settings, cursor, testing mode, main window, module and I/O managers."""

    PROPERTIES = {"applicationName": "Slicer", "applicationVersion": "5.x"}
    SIGNALS = {"startupCompleted": ("startupCompleted()",)}

    def __init__(self, cache_path):
        super().__init__()
        self._fake_cache = str(cache_path)
        self._fake_modules = FakeModuleManager()
        self._fake_io = FakeIOManager(self)
        self._fake_testing = False
        self._fake_sequences_logic = None
        self._fake_application_logic = None
        self._fake_events = 0
        self._fake_main_window = qSlicerMainWindow()

    def topLevelWidgets(self):
        return [self._fake_main_window]

    def __getattr__(self, name):
        if name == "cachePath":
            return object.__getattribute__(self, "_fake_cache")
        return super().__getattr__(name)

    def translate(self, context, text):
        return text

    def moduleManager(self):
        return self._fake_modules

    def coreIOManager(self):
        return self._fake_io

    def settings(self):
        return QSettings()

    def userSettings(self):
        return QSettings()

    def setOverrideCursor(self, cursor):
        QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        QApplication.restoreOverrideCursor()

    def overrideCursorDepth(self):
        return len(QApplication._cursors)

    def testingEnabled(self):
        return self._fake_testing

    def processEvents(self, *args):
        self._fake_events += 1

    def layoutManager(self):
        return None

    def applicationLogic(self):
        return self._fake_application_logic

    def sequences_logic(self):
        return self._fake_sequences_logic

    def commandOptions(self):
        return types.SimpleNamespace(noMainWindow=True)

    def restart(self):
        pass


def install(cache_path):
    """Put ``qt`` and ``ctk`` in sys.modules, the qMRML widgets and ``slicer.app`` into ``slicer``.

    Returns the application object. A no-op inside real Slicer is not needed:
    this is only ever imported by the tests.
    """
    import slicer

    qt = types.ModuleType("qt")
    for klass in (QObject, QWidget, QLayout, QVBoxLayout, QHBoxLayout, QGridLayout, QFormLayout, QLabel,
                  QAbstractButton, QPushButton, QToolButton, QCheckBox, QLineEdit, QTextEdit, QComboBox,
                  QAbstractSpinBox, QSpinBox, QSlider, QDoubleSpinBox, QProgressDialog, QMessageBox, QFileDialog,
                  QMenu, QAction, QSizePolicy, QIcon, QColor, QFile, QDir, QSettings, QTimer, QUrl,
                  QDesktopServices, Qt, QUiLoader, QCursor, QApplication):
        setattr(qt, klass.__name__, klass)
    ctk = types.ModuleType("ctk")
    for klass in (ctkMessageBox, ctkCollapsibleButton, ctkDoubleSpinBox, ctkSliderWidget, ctkComboBox, ctkCheckBox,
                  ctkPathLineEdit, ctkDirectoryButton, ctkCheckablePushButton, ctkRangeWidget, ctkDoubleRangeSlider,
                  ctkDoubleSlider, ctkColorPickerButton):
        setattr(ctk, klass.__name__, klass)
    sys.modules["qt"], sys.modules["ctk"] = qt, ctk
    for klass in (qMRMLWidget, qMRMLNodeComboBox, qMRMLCheckableNodeComboBox, qMRMLSegmentSelectorWidget):
        setattr(slicer, klass.__name__, klass)
    slicer.qMRMLSliderWidget = type("qMRMLSliderWidget", (ctkSliderWidget,), {})
    slicer.qMRMLSpinBox = type("qMRMLSpinBox", (ctkDoubleSpinBox,), {})
    slicer.qMRMLRangeWidget = type("qMRMLRangeWidget", (ctkRangeWidget,), {})
    slicer.qSlicerWidget = qMRMLWidget
    app = FakeApplication(cache_path)
    slicer.app = app
    return app
