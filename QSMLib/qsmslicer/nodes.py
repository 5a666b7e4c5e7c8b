"""MRML nodes <-> arrays, and volume geometry.

This is the only place where the Slicer side converts between nodes and
arrays. Slicer's ``arrayFromVolume`` returns voxels in (k, j, i) order; qsmlib
works in (i, j, k), the NIfTI voxel order. :func:`array_from_volume` and
:func:`update_volume_from_array` are the one transpose in each direction.

A volume's IJKToRAS matrix is the same thing as a NIfTI affine (both map voxel
indices to RAS millimetres), so qsmlib's affine helpers apply to it directly.
"""

import numpy as np
import slicer
import slicer.util
import vtk

from qsmlib.dipole import b0_direction_from_affine, voxel_size_from_affine
from qsmlib.errors import QSMInputError

#: Relative tolerance when comparing two IJKToRAS matrices.
GEOMETRY_RTOL = 1e-5
#: Absolute tolerance (mm) when comparing two IJKToRAS matrices.
GEOMETRY_ATOL_MM = 1e-4
#: Decimals (mm) kept in voxel sizes: column norms of IJKToRAS carry float noise
#: (2 mm comes out as 1.9999999999999998), which must not change sphere kernels.
VOXEL_SIZE_DECIMALS = 6


def array_from_volume(volume_node, dtype=None):
    """Voxels of a volume node as a new array in (i, j, k) order.

    Multi-component volumes (vector volumes, multi-volumes) give (i, j, k, c).
    The array is a copy: changing it does not change the node.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise QSMInputError(f"volume {_name(volume_node)}: it has no voxels; load or select an image volume")
    kji = slicer.util.arrayFromVolume(volume_node)
    order = (2, 1, 0) if kji.ndim == 3 else (2, 1, 0, 3)
    ijk = np.ascontiguousarray(np.transpose(kji, order))
    return ijk if dtype is None else ijk.astype(dtype, copy=False)


def update_volume_from_array(volume_node, array_ijk, ijk_to_ras=None):
    """Set the voxels (and optionally the IJKToRAS) of a volume node from an (i, j, k) array."""
    array_ijk = np.asarray(array_ijk)
    if array_ijk.ndim != 3:
        raise QSMInputError(f"volume {_name(volume_node)}: expected a 3D (i, j, k) array, got shape {array_ijk.shape}")
    if array_ijk.dtype == np.bool_:
        array_ijk = array_ijk.astype(np.uint8)
    if ijk_to_ras is not None:
        set_ijk_to_ras(volume_node, ijk_to_ras)
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(np.transpose(array_ijk, (2, 1, 0))))


def ijk_to_ras(volume_node):
    """The volume's IJKToRAS matrix as a 4x4 float64 array (equal to a NIfTI affine)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def set_ijk_to_ras(volume_node, affine):
    """Set a volume's IJKToRAS matrix from a 4x4 array (a NIfTI affine)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise QSMInputError(f"IJKToRAS: expected a 4x4 matrix, got shape {affine.shape}")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(affine[r, c]))
    volume_node.SetIJKToRASMatrix(matrix)


def b0_direction(volume_node):
    """B0 direction in (i, j, k) voxel coordinates from the volume's IJKToRAS.

    B0 is the scanner's superior-inferior axis, so oblique slices give a tilted
    direction (see :func:`qsmlib.dipole.b0_direction_from_affine`). The node's
    own IJKToRAS is used, not parent transforms: a transform applied after the
    scan (a registration, say) does not move the head in the scanner.
    """
    return b0_direction_from_affine(ijk_to_ras(volume_node))


def voxel_size(volume_node):
    """Voxel size in mm along i, j, k (rounded to 1e-6 mm)."""
    return tuple(round(float(v), VOXEL_SIZE_DECIMALS) for v in voxel_size_from_affine(ijk_to_ras(volume_node)))


def dimensions(volume_node):
    """Voxel dimensions (i, j, k) of a volume node."""
    image = volume_node.GetImageData()
    return tuple(int(d) for d in image.GetDimensions()) if image is not None else None


def same_geometry(node_a, node_b):
    """True when two volumes have the same dimensions and IJKToRAS."""
    return dimensions(node_a) == dimensions(node_b) and np.allclose(
        ijk_to_ras(node_a), ijk_to_ras(node_b), rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL_MM)


def check_same_geometry(node, reference, what):
    if not same_geometry(node, reference):
        raise QSMInputError(
            f"{what} '{_name(node)}' has dimensions {dimensions(node)} and IJKToRAS\n{ijk_to_ras(node)}\n"
            f"but '{_name(reference)}' has {dimensions(reference)} and\n{ijk_to_ras(reference)};\n"
            "they must cover the same voxels: resample one onto the other (Resample Scalar/Vector/DWI Volume)")


def _name(node):
    return node.GetName() if node is not None else "(none)"


def scene_of(node):
    """The MRML scene that holds ``node``; outputs made from it go there.

    Raises :class:`QSMInputError` for a node in no scene (one removed from its scene, say).
    """
    scene = node.GetScene() if node is not None else None
    if scene is None:
        raise QSMInputError(f"'{_name(node)}' is in no MRML scene; add it to a scene first")
    return scene


# ---------------------------------------------------------------------------------------------
# Multi-echo inputs

def echo_volume_nodes(source):
    """The per-echo 3D volume nodes of an echo series, in order.

    ``source`` is an ordered list of scalar volume nodes, or a Sequence node of
    scalar volumes (in its index order). A multi-component volume (a
    multi-volume or vector volume) is returned as ``[source]``.
    """
    if source is None:
        return []
    if isinstance(source, (list, tuple)):
        return list(source)
    if source.IsA("vtkMRMLSequenceNode"):
        nodes = [source.GetNthDataNode(n) for n in range(source.GetNumberOfDataNodes())]
        if not nodes or not all(node is not None and node.IsA("vtkMRMLVolumeNode") for node in nodes):
            raise QSMInputError(f"sequence '{_name(source)}': it must hold one image volume per echo")
        return nodes
    if source.IsA("vtkMRMLVolumeNode"):
        return [source]
    raise QSMInputError(f"'{_name(source)}' ({source.GetClassName()}) is not a volume, a list of volumes "
                        "or a sequence of volumes")


def displayable_volume(source):
    """The volume that shows an echo series in the views: its first echo, or a sequence's proxy node.

    A sequence's data nodes live in the sequence's own scene and cannot be shown;
    its proxy node in a sequence browser of the scene can. None when a sequence
    has no browser.
    """
    if isinstance(source, (list, tuple)):
        return source[0] if source else None
    if source is None or not source.IsA("vtkMRMLSequenceNode"):
        return source
    scene = source.GetScene()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(index, "vtkMRMLSequenceBrowserNode")
        if browser.IsSynchronizedSequenceNode(source.GetID(), True) and browser.GetProxyNode(source) is not None:
            return browser.GetProxyNode(source)
    return None


def echo_series_array(source, what):
    """Stack an echo series into one float32 (i, j, k, echo) array.

    An :class:`EchoSeries` whose nodes still show its array gives that array,
    not a copy: the caller must not write into it.

    Returns
    -------
    array : ndarray of float32, shape (X, Y, Z, E)
    reference : vtkMRMLVolumeNode
        The first echo's node; its IJKToRAS is the geometry of every echo.
    """
    if isinstance(source, EchoSeries) and source.shows_array():
        return source.array, source[0]
    nodes = echo_volume_nodes(source)
    if not nodes:
        raise QSMInputError(f"{what}: no volume selected; select one volume per echo, a sequence, or a multi-volume")
    if len(nodes) == 1:
        array = array_from_volume(nodes[0], np.float32)
        if array.ndim == 3:
            array = array[..., None]
        return array, nodes[0]
    for node in nodes[1:]:
        check_same_geometry(node, nodes[0], f"{what} echo")
    arrays = [array_from_volume(node, np.float32) for node in nodes]
    if any(a.ndim != 3 for a in arrays):
        raise QSMInputError(f"{what}: every echo must be a 3D scalar volume")
    return np.stack(arrays, axis=-1), nodes[0]


def phase_series_radians(source):
    """The phase of an echo series in radians: ``(phase_rad, scaling, reference)``.

    ``phase_rad`` is float32 (i, j, k, echo), ``scaling`` the record of
    :func:`qsmlib.io.phase_scaling.phase_to_radians` and ``reference`` the
    first echo's node. An :class:`EchoSeries` that carries its ``phase_scaling``
    is already in radians: its array is returned as it is (not to be written into).
    """
    from qsmlib.io.phase_scaling import phase_to_radians

    array, reference = echo_series_array(source, "phase")
    if isinstance(source, EchoSeries) and source.phase_scaling is not None and array is source.array:
        return array, source.phase_scaling, reference
    phase_rad, scaling = phase_to_radians(array, name="phase")
    return phase_rad, scaling, reference


class EchoSeries(list):
    """Per-echo volume nodes whose voxels are one (i, j, k, echo) float32 array, held once.

    A list of the nodes, so it goes wherever a list of echo volumes goes, that
    also carries ``array``: each node's image data is a view of one echo of it
    (Fortran order makes every echo one block in VTK's voxel order), and
    :func:`echo_series_array` hands the Logic the array itself instead of
    stacking a copy of the nodes. ``phase_scaling`` is set when the array is a
    phase already converted to radians (the record of
    :func:`qsmlib.io.phase_scaling.phase_to_radians`). Nothing may write into
    the nodes' voxels: they are the array. Made by :func:`echo_series`.
    """

    def __init__(self, volume_nodes, array, phase_scaling=None):
        super().__init__(volume_nodes)
        self.array = array
        self.phase_scaling = phase_scaling

    def shows_array(self):
        """Whether every node still shows its echo of ``array`` (a node given new voxels no longer does)."""
        if len(self) != self.array.shape[3]:
            return False
        for echo, node in enumerate(self):
            image = node.GetImageData() if node is not None else None
            if image is None or image.GetPointData().GetScalars() is None:
                return False
            if not np.shares_memory(slicer.util.arrayFromVolume(node), self.array[..., echo]):
                return False
        return True

    def with_nodes(self, volume_nodes):
        """The same array and scaling shown by other nodes (copies of these, in another scene)."""
        return EchoSeries(volume_nodes, self.array, self.phase_scaling)


def echo_series(scene, array_ijke, affine, name, phase_scaling=None):
    """One scalar volume per echo (``<name>_e1``, ``_e2``, ...) that shows, without copying, an (i, j, k, echo) array.

    The array is converted once to float32 in Fortran order (no copy when it
    already is, as NIfTI data read by nibabel is). Returns an :class:`EchoSeries`.
    """
    from vtk.util import numpy_support

    array = np.asfortranarray(array_ijke, dtype=np.float32)
    if array.ndim != 4:
        raise QSMInputError(f"{name}: expected an (i, j, k, echo) array, got shape {array.shape}")
    volumes = []
    for echo in range(array.shape[3]):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{name}_e{echo + 1}"))
        image = vtk.vtkImageData()
        image.SetDimensions(*array.shape[:3])
        # An echo of a Fortran-ordered array is one contiguous block, i fastest: VTK's order.
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array[..., echo].ravel(order="F"), deep=False))
        node.SetAndObserveImageData(image)
        set_ijk_to_ras(node, affine)
        node.CreateDefaultDisplayNodes()
        volumes.append(node)
    return EchoSeries(volumes, array, phase_scaling)


# ---------------------------------------------------------------------------------------------
# Masks from labelmaps and segmentations

def segment_ids(segmentation_node):
    """IDs of every segment of a segmentation node, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def segment_mask(segmentation_node, segment_ids_, reference_volume):
    """Union of segments as a bool (i, j, k) array on the reference volume's voxels.

    Uses Slicer's own export (vtkSlicerSegmentationsModuleLogic), which
    resamples the segments onto the reference geometry.
    """
    scene = segmentation_node.GetScene()
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids_:
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            raise QSMInputError(f"segmentation '{_name(segmentation_node)}' has no segment '{segment_id}'")
        ids.InsertNextValue(segment_id)
    # The export adds a labelmap with display, storage and colour nodes: all of them go again.
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("QSM_temporary"))
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_volume):
            raise QSMInputError(f"segmentation '{_name(segmentation_node)}': its segments could not be "
                                f"exported onto the voxels of '{_name(reference_volume)}'")
        mask = array_from_volume(labelmap) > 0
    finally:
        added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
        for node in [node for node in added if node.GetID() not in before]:
            scene.RemoveNode(node)
    expected = dimensions(reference_volume)
    if mask.shape != expected:
        raise QSMInputError(f"segmentation '{_name(segmentation_node)}' exported to shape {mask.shape}, "
                            f"expected {expected}")
    return mask


def mask_from_node(mask_node, reference_volume, segment_ids_=None):
    """A bool (i, j, k) mask from a labelmap/scalar volume (> 0) or a segmentation node.

    Volumes must share the reference's voxels; segmentations are resampled onto
    them. ``segment_ids_`` picks segments (default: all segments).
    """
    if mask_node.IsA("vtkMRMLSegmentationNode"):
        ids = list(segment_ids_) if segment_ids_ else segment_ids(mask_node)
        if not ids:
            raise QSMInputError(f"segmentation '{_name(mask_node)}' has no segments; draw the mask first")
        return segment_mask(mask_node, ids, reference_volume)
    if mask_node.IsA("vtkMRMLVolumeNode"):
        check_same_geometry(mask_node, reference_volume, "mask")
        return array_from_volume(mask_node) > 0
    raise QSMInputError(f"mask '{_name(mask_node)}' must be a labelmap volume or a segmentation")


# ---------------------------------------------------------------------------------------------
# Output volumes

def output_volume(scene, name, array_ijk, affine, *, node=None, class_name="vtkMRMLScalarVolumeNode",
                  beside=None):
    """Create (or update ``node``) a volume with the given voxels and IJKToRAS.

    The new node is placed in the subject hierarchy under the same parent as
    ``beside`` (typically the input volume).
    """
    if node is None:
        node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    update_volume_from_array(node, array_ijk, affine)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    if beside is not None:
        place_beside(node, beside)
    return node


def echo_volumes(scene, array_ijke, affine, name):
    """One scalar volume per echo of an (i, j, k, echo) array, added to ``scene`` as ``<name>_e1``, ``_e2``, ..."""
    return [output_volume(scene, f"{name}_e{echo + 1}", array_ijke[..., echo], affine)
            for echo in range(array_ijke.shape[3])]


def place_beside(node, beside):
    """Put ``node`` under the subject hierarchy parent of ``beside``."""
    scene = node.GetScene()
    hierarchy = scene.GetSubjectHierarchyNode() if scene is not None else None
    if hierarchy is None or beside.GetScene() is not scene:
        return
    beside_item = hierarchy.GetItemByDataNode(beside)
    item = hierarchy.GetItemByDataNode(node)
    if beside_item and item:
        hierarchy.SetItemParent(item, hierarchy.GetItemParent(beside_item))


def set_voxel_units(volume_node, unit, meaning=None):
    """Record the voxel value unit (UCUM code, e.g. "[ppm]" or "Hz") on a volume node."""
    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(unit, "UCUM", meaning or unit.strip("[]"))
    volume_node.SetVoxelValueUnits(entry)
