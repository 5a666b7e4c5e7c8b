"""The Widgets' shared parameter-node scaffolding (qsmslicer.widget) on a real MRML scene.

The Widgets themselves need Qt; the mixin needs only MRML observers and the
parameter node wrapper's connectGui/disconnectGui, so it runs here with a real
scene and a real scripted-module node behind a recording stand-in wrapper.
"""

from types import SimpleNamespace

import slicer_support
from slicer.util import VTKObservationMixin

from qsmslicer.widget import ParameterNodeWidgetMixin


class _RecordingWrapper:
    """A real vtkMRMLScriptedModuleNode behind the wrapper calls the mixin makes."""

    def __init__(self, node):
        self.node = node
        self.connected = []

    def connectGui(self, ui):
        tag = ("gui", len(self.connected), ui)
        self.connected.append(tag)
        return tag

    def disconnectGui(self, tag):
        self.connected.remove(tag)

    def AddObserver(self, event, callback, priority=0.0):
        return self.node.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        self.node.RemoveObserver(tag)


class _Widget(ParameterNodeWidgetMixin, VTKObservationMixin):
    def __init__(self, wrapper):
        VTKObservationMixin.__init__(self)
        self.ui = "ui"
        self.parent = SimpleNamespace(isEntered=True)
        self.logic = SimpleNamespace(getParameterNode=lambda: wrapper)
        self.checks = 0

    def _checkCanApply(self, caller=None, event=None):
        self.checks += 1


def test_parameter_node_connection_follows_enter_exit_and_scene_close():
    scene = slicer_support.SceneLogics().scene
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "parameters")
    wrapper = _RecordingWrapper(node)
    widget = _Widget(wrapper)
    widget.connectScene(scene)
    assert len(wrapper.connected) == 1 and widget.checks == 1
    node.SetAttribute("echoTimesS", "0.004")  # a parameter changes: Apply is re-checked
    assert widget.checks == 2
    widget.exit()  # leaving the module: GUI disconnected, changes no longer followed
    assert wrapper.connected == [] and widget._parameterNode is wrapper
    node.SetAttribute("echoTimesS", "0.005")
    assert widget.checks == 2
    widget.exit()  # twice is harmless
    widget.enter()
    assert len(wrapper.connected) == 1 and widget.checks == 3
    widget.setParameterNode(wrapper)  # re-selecting never leaves two connections
    assert len(wrapper.connected) == 1 and widget.checks == 4

    scene.Clear(0)  # File > Close scene while the module is shown: released, then shown again
    assert len(wrapper.connected) == 1 and widget._parameterNode is wrapper and widget.checks == 5
    widget.parent.isEntered = False
    scene.Clear(0)  # closed while another module is shown: released and left alone
    assert wrapper.connected == [] and widget._parameterNode is None
    widget.parent.isEntered = True
    widget.cleanup()  # the module is destroyed: no observer left on the scene
    scene.Clear(0)
    assert wrapper.connected == [] and widget._parameterNode is None


class _CheckableList:
    """Stands in for a qMRMLCheckableNodeComboBox: the nodes the user ticked, and who listens."""

    def __init__(self, nodes):
        self.nodes, self.listeners = nodes, []

    def checkedNodes(self):
        return self.nodes

    def connect(self, signal, slot):
        self.listeners.append((signal, slot))


def test_echo_lists_copy_the_checked_volumes_into_the_parameter_node():
    scene = slicer_support.SceneLogics().scene
    volumes = [scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"echo{n}") for n in range(4)]
    widget = _Widget(None)
    widget.ui = SimpleNamespace(magnitudeEchoesSelector=_CheckableList(volumes[:2]),
                                phaseEchoesSelector=_CheckableList(volumes[2:]))
    widget.connectEchoLists()
    assert widget.ui.magnitudeEchoesSelector.listeners == [("checkedNodesChanged()", widget.onEchoListsChanged)]
    assert widget.ui.phaseEchoesSelector.listeners == [("checkedNodesChanged()", widget.onEchoListsChanged)]
    widget.onEchoListsChanged()  # no parameter node yet: nothing to copy into, no error
    widget._parameterNode = SimpleNamespace(magnitudeEchoes=[], phaseEchoes=[])
    widget.onEchoListsChanged()
    assert widget._parameterNode.magnitudeEchoes == volumes[:2]
    assert widget._parameterNode.phaseEchoes == volumes[2:]
