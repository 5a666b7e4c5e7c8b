"""The parameter-node scaffolding that every module Widget of the Slicer template repeats.

A Widget mixes this in after ``ScriptedLoadableModuleWidget`` and
``VTKObservationMixin``, sets ``self.logic`` and ``self.ui`` in ``setup`` (see
:meth:`ParameterNodeWidgetMixin.loadModuleUi`) and then calls
:meth:`ParameterNodeWidgetMixin.connectScene`. It provides
``_checkCanApply(caller=None, event=None)``, which runs whenever the parameter
node changes, and ``onParameterNodeModified()`` for Widget-specific follow-ups.

Works with Slicer 5.6 to 5.12: the GUI is bound with ``connectParametersToGui``,
whose tag every release returns (``connectGui`` returns None before 5.10, which
would leave old bindings live after exit and enter).
"""

import qt
import slicer
import slicer.util
import vtk

#: The dynamic property of .ui widgets that names their parameter.
PARAMETER_NAME_PROPERTY = "SlicerParameterName"


def parameter_widgets(ui):
    """``{parameter name: widget}`` for every widget of ``ui`` that carries a SlicerParameterName."""
    found = {}
    for widget in vars(ui).values():
        name = widget.property(PARAMETER_NAME_PROPERTY)
        if name:
            found[name] = widget
    return found


class ParameterNodeWidgetMixin:
    """Scene-close observers and the parameter node's GUI connection, as in the Slicer template."""

    _parameterNode = None
    _parameterNodeGuiTag = None
    _updatingEchoLists = False

    def loadModuleUi(self, uiFileName, logic):
        """The template's opening of ``setup``: the .ui in the panel, its widgets as ``self.ui``, the Logic."""
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{uiFileName}"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic

    # -- echo lists: checkable combo boxes have no parameter-node connector -------------------------

    def connectEchoLists(self):
        """Keep the checked echo volumes and the parameter node's echo lists equal, both ways."""
        for selector in (self.ui.magnitudeEchoesSelector, self.ui.phaseEchoesSelector):
            selector.connect("checkedNodesChanged()", self.onEchoListsChanged)

    def onEchoListsChanged(self):
        if self._parameterNode and not self._updatingEchoLists:
            self._parameterNode.magnitudeEchoes = list(self.ui.magnitudeEchoesSelector.checkedNodes())
            self._parameterNode.phaseEchoes = list(self.ui.phaseEchoesSelector.checkedNodes())

    def updateEchoListsFromParameterNode(self):
        """Check exactly the volumes the parameter node lists (after a scene load, or a script's change)."""
        if not self._parameterNode or not hasattr(self.ui, "magnitudeEchoesSelector"):
            return
        self._updatingEchoLists = True
        try:
            for selector, chosen in ((self.ui.magnitudeEchoesSelector, self._parameterNode.magnitudeEchoes),
                                     (self.ui.phaseEchoesSelector, self._parameterNode.phaseEchoes)):
                chosen_ids = {node.GetID() for node in chosen if node is not None}
                for node in selector.nodes():
                    state = qt.Qt.Checked if node.GetID() in chosen_ids else qt.Qt.Unchecked
                    if selector.checkState(node) != state:
                        selector.setCheckState(node, state)
        finally:
            self._updatingEchoLists = False

    # -- scene and parameter node -------------------------------------------------------------------

    def connectScene(self, scene):
        """Follow the scene's close events and show the Logic's parameter node in the GUI."""
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self._releaseParameterNode()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._releaseParameterNode()

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        """Show ``inputParameterNode`` (or nothing, for None) in the GUI and follow its changes."""
        self._releaseParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self.parameterNodeConnecting()
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(parameter_widgets(self.ui))
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def parameterNodeConnecting(self):
        """Called just before a parameter node is bound to the GUI (override to remember its state)."""

    def _onParameterNodeModified(self, caller=None, event=None):
        self.updateEchoListsFromParameterNode()
        self.onParameterNodeModified()
        self._checkCanApply()

    def onParameterNodeModified(self):
        """Widget-specific reaction to a parameter change (override)."""

    def _releaseParameterNode(self):
        """Disconnect the GUI from the parameter node and stop following it (the node is kept)."""
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
