"""Display settings for QSM results: a diverging colour map centred on zero."""

import numpy as np

#: Half-width of the default susceptibility window (ppm): the map shows -0.15 to +0.15 ppm.
SUSCEPTIBILITY_HALF_WINDOW_PPM = 0.15
#: Slicer's own diverging colour table, present in a full Slicer scene.
SLICER_DIVERGING_COLOR_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
#: Attribute that marks the colour table this package creates when Slicer's is missing.
DIVERGING_ATTRIBUTE = "QSM.DivergingColorTable"
DIVERGING_NAME = "QSM diverging blue-white-red"


def diverging_color_node(scene):
    """A blue-white-red colour node: Slicer's own if the scene has it, else one made once per scene."""
    node = scene.GetNodeByID(SLICER_DIVERGING_COLOR_ID)
    if node is not None:
        return node
    tables = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for n in range(tables.GetNumberOfItems()):
        table = tables.GetItemAsObject(n)
        if table.GetAttribute(DIVERGING_ATTRIBUTE) == "1":
            return table
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", DIVERGING_NAME)
    table.SetTypeToUser()
    table.SetAttribute(DIVERGING_ATTRIBUTE, "1")
    count = 256
    table.SetNumberOfColors(count)
    table.GetLookupTable().SetRange(0, count - 1)
    for index, t in enumerate(np.linspace(-1.0, 1.0, count)):
        # blue (-1) -> white (0) -> red (+1), linear in each half
        if t < 0:
            rgb = (1.0 + t, 1.0 + t, 1.0)
        else:
            rgb = (1.0, 1.0 - t, 1.0 - t)
        table.SetColor(index, f"{t:+.3f}", *rgb, 1.0)
    return table


def show_diverging(volume_node, half_window):
    """Diverging colour map centred on 0, window [-half_window, +half_window]."""
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(diverging_color_node(volume_node.GetScene()).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(2.0 * float(half_window), 0.0)
    return display


def show_susceptibility(volume_node, half_window_ppm=SUSCEPTIBILITY_HALF_WINDOW_PPM):
    """Susceptibility display: diverging colours, window -0.15 to +0.15 ppm by default."""
    return show_diverging(volume_node, half_window_ppm)


def show_field(volume_node, field, mask, percentile=99.0):
    """Field map display: diverging colours, window +- the ``percentile`` of |field| in the mask."""
    values = np.abs(np.asarray(field)[np.asarray(mask, dtype=bool)])
    half = float(np.percentile(values, percentile)) if values.size else 1.0
    return show_diverging(volume_node, half if half > 0 else 1.0)
