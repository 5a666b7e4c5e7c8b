"""The parameter-node scaffolding that every module Widget of the Slicer template repeats.

A Widget mixes this in after ``ScriptedLoadableModuleWidget`` and
``VTKObservationMixin``, sets ``self.logic`` and ``self.ui`` in ``setup`` and then
calls :meth:`ParameterNodeWidgetMixin.connectScene`. It provides
``_checkCanApply(caller=None, event=None)``, which runs whenever the parameter
node changes. No Qt here: only MRML observers and the parameter node wrapper's
``connectGui``/``disconnectGui``.
"""

import slicer
import slicer.util
import vtk


class ParameterNodeWidgetMixin:
    """Scene-close observers and the parameter node's GUI connection, as in the Slicer template."""

    _parameterNode = None
    _parameterNodeGuiTag = None

    def loadModuleUi(self, uiFileName, logic):
        """The template's opening of ``setup``: the .ui in the panel, its widgets as ``self.ui``, the Logic."""
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{uiFileName}"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic

    def connectEchoLists(self):
        """Checkable echo lists have no parameter-node connector: copy their checked nodes by hand."""
        for selector in (self.ui.magnitudeEchoesSelector, self.ui.phaseEchoesSelector):
            selector.connect("checkedNodesChanged()", self.onEchoListsChanged)

    def onEchoListsChanged(self):
        if self._parameterNode:
            self._parameterNode.magnitudeEchoes = list(self.ui.magnitudeEchoesSelector.checkedNodes())
            self._parameterNode.phaseEchoes = list(self.ui.phaseEchoesSelector.checkedNodes())

    def connectScene(self, scene):
        """Follow the scene's close events and show the Logic's parameter node in the GUI."""
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
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
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _releaseParameterNode(self):
        """Disconnect the GUI from the parameter node and stop following it (the node is kept)."""
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
