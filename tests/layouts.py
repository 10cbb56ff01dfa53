"""The same physical image stored with its index axes permuted and/or reversed, built by hand (numpy and the
geometry arithmetic), independently of SimpleITK's reorientation filters."""

import numpy as np
import SimpleITK as sitk


def relayout(image, order=(0, 1, 2), flips=(False, False, False)):
    """A copy of the 3-D `image` whose index axis a (x, y, z) is the original's axis order[a], reversed where
    flips[a]; direction, spacing and origin change so that every voxel keeps its physical position.
    Returns (copy, index map): the map takes an array of the copy ((z, y, x) order) to the original's."""
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (x, y, z)
    moved = array.transpose(order)
    for axis, flip in enumerate(flips):
        if flip:
            moved = np.flip(moved, axis)
    copy = sitk.GetImageFromArray(np.ascontiguousarray(moved.transpose(2, 1, 0)))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    columns = [direction[:, order[a]] * (-1 if flips[a] else 1) for a in range(3)]
    copy.SetDirection(tuple(np.stack(columns, axis=1).ravel()))
    copy.SetSpacing(tuple(image.GetSpacing()[order[a]] for a in range(3)))
    corner = [image.GetSize()[order[a]] - 1 if flips[a] else 0 for a in range(3)]
    original_index = [0, 0, 0]
    for a in range(3):
        original_index[order[a]] = corner[a]
    copy.SetOrigin(image.TransformIndexToPhysicalPoint(original_index))

    def back(values):
        """An array (z, y, x) on the copy's grid -> the same values on the original's grid."""
        xyz = values.transpose(2, 1, 0)
        for axis, flip in enumerate(flips):
            if flip:
                xyz = np.flip(xyz, axis)
        return np.ascontiguousarray(xyz.transpose(np.argsort(order)).transpose(2, 1, 0))

    return copy, back
