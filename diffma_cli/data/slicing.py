"""Volume <-> 224×224 axial slices, and the exact inverse on the original grid.

Arrays are indexed (z, y, x) as SimpleITK's `GetArrayFromImage` gives them; spacing is (x, y, z) in mm as
SimpleITK reports it. Each kept axial slice (ny, nx) is placed in a square field of view of side
`L = max(ny * sy, nx * sx)` mm centred on the slice (the short side is padded, so the aspect ratio in mm is
kept) and resampled to `size × size` pixels of `L / size` mm: linear interpolation for CT and MR, nearest
for the mask; samples in the padding take `fill`. Undoing maps every original voxel centre back into the
square and interpolates the slices there (same orders); axial slices that were not kept take `fill`.
Where slicing shrinks an image (pelvis: ~2.5 voxels per pixel), CT and MR are first smoothed with a
Gaussian of sigma = (factor - 1) / 2 voxels per axis, as scikit-image's `resize(anti_aliasing=True)` does
(and as the released code's PIL bilinear resize effectively did), so that noise and edges do not alias;
the record holds these sigmas (`antialias_px`). Undoing does not smooth: it samples the slices at the
original voxel centres, which reproduces a prepared volume up to interpolation error.

Public interface (used by `prepare`, `convert` and `eval`; kept stable):

- `plan_slicing(shape_zyx, spacing_xyz, body=None, size=224, geometry=None) -> record`: the JSON-able
  record of everything needed to slice and to undo it; `body` (bool (z, y, x)) selects the axial slices
  that hold body (None: all slices); `geometry` may carry "origin" and "direction" so that the inverse can
  rebuild a `SimpleITK.Image`.
- `slice_volume(volume, record, interpolation="linear", fill=-1.0) -> (n, size, size) float32`.
- `unslice_volume(slices, record, interpolation="linear", fill=-1.0) -> (nz, ny, nx) float32`.
- `slice_image(image, body=None, ...) -> (slices, record)` and `unslice_image(slices, record, ...) ->
  SimpleITK.Image` do the same on images, carrying origin/direction/spacing in the record.
- `body_mask_from_ct(ct_hu, spacing_xyz) -> bool (z, y, x)`: a body mask for a CT that comes without one.
"""

from __future__ import annotations

import numpy as np

# The paper trains on 224×224 images ("Training strategies"; also BiomedCLIP's input size).
SLICE_SIZE = 224
INTERPOLATION_ORDER = {"linear": 1, "nearest": 0}
RECORD_VERSION = 1


def plan_slicing(shape_zyx, spacing_xyz, body: np.ndarray | None = None, size: int = SLICE_SIZE,
                 geometry: dict | None = None) -> dict:
    """Everything needed to slice a volume of `shape_zyx` and undo it (JSON-able dict).

    Keys: version, size, shape_zyx, spacing_xyz, field_of_view_mm (side of the square), slices (kept z
    indices, ascending), antialias_px (Gaussian sigmas [y, x] in voxels applied before shrinking; absent in
    older records: none), plus origin/direction when `geometry` gives them.
    """
    shape_zyx = [int(n) for n in shape_zyx]
    spacing_xyz = [float(s) for s in spacing_xyz]
    if len(shape_zyx) != 3 or min(shape_zyx) < 1 or len(spacing_xyz) != 3 or min(spacing_xyz) <= 0:
        raise ValueError(f"need a 3-D shape and positive spacing, got {shape_zyx} and {spacing_xyz}")
    if body is None:
        slices = list(range(shape_zyx[0]))
    else:
        body = np.asarray(body)
        if list(body.shape) != shape_zyx:
            raise ValueError(f"body mask shape {body.shape} differs from the volume shape {shape_zyx}")
        slices = [int(z) for z in np.flatnonzero(body.reshape(shape_zyx[0], -1).any(axis=1))]
    field_of_view = max(shape_zyx[1] * spacing_xyz[1], shape_zyx[2] * spacing_xyz[0])
    # Shrink factor per in-plane axis (y, x): square pixel size over voxel size.
    factor = (field_of_view / size / spacing_xyz[1], field_of_view / size / spacing_xyz[0])
    record = {"version": RECORD_VERSION, "size": int(size), "shape_zyx": shape_zyx,
              "spacing_xyz": spacing_xyz, "field_of_view_mm": float(field_of_view), "slices": slices,
              "antialias_px": _antialias_sigma(factor)}
    for key in ("origin", "direction"):
        if geometry and key in geometry:
            record[key] = [float(v) for v in geometry[key]]
    return record


def _antialias_sigma(factor) -> list[float]:
    """Gaussian sigma (in input pixels) before shrinking by `factor`: (factor - 1) / 2, 0 when enlarging."""
    return [round(float(max(0.0, (f - 1.0) / 2.0)), 6) for f in factor]


def _smooth(stack: np.ndarray, sigma_yx, interpolation: str) -> np.ndarray:
    """Anti-alias the (y, x) planes of a (n, h, w) stack before shrinking; masks (nearest) stay sharp."""
    if interpolation != "linear" or not any(s > 0 for s in sigma_yx):
        return stack
    from scipy import ndimage

    return ndimage.gaussian_filter(np.asarray(stack, np.float32), (0.0, *sigma_yx), mode="nearest")


def _square_from_slice(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """Affine map from square pixel indices (r, c) to slice indices (i, j): (i, j) = scale * (r, c) + offset.

    Pixel centres: slice index i sits at (i + 0.5) * sy mm from the slice's edge; square pixel r at
    (r + 0.5) * d mm from the square's edge, d = L / size; the square's edge is (L - ny * sy) / 2 mm before
    the slice's (centred padding).
    """
    _, ny, nx = record["shape_zyx"]
    sx, sy, _ = record["spacing_xyz"]
    side = record["field_of_view_mm"]
    pixel = side / record["size"]
    extent = np.array([ny * sy, nx * sx])
    spacing = np.array([sy, sx])
    scale = pixel / spacing
    offset = ((extent - side) / 2 + 0.5 * pixel) / spacing - 0.5
    return scale, offset


def _order(interpolation: str) -> int:
    if interpolation not in INTERPOLATION_ORDER:
        raise ValueError(f"interpolation {interpolation!r}; choose one of {sorted(INTERPOLATION_ORDER)}")
    return INTERPOLATION_ORDER[interpolation]


def _resample_stack(stack: np.ndarray, scale, offset, out_yx, order: int) -> np.ndarray:
    """Resample each (y, x) plane of `stack` (n, h, w) with output->input map scale * index + offset.

    Edges are clamped ('nearest' mode): callers set what lies outside the input with `_outside`.
    """
    from scipy import ndimage

    stack = np.ascontiguousarray(stack, dtype=np.float32)
    out = np.empty((stack.shape[0], *out_yx), np.float32)
    for k, plane in enumerate(stack):
        ndimage.affine_transform(plane, scale, offset=offset, output_shape=out_yx, output=out[k],
                                 order=order, mode="nearest", prefilter=False)
    return out


def _outside(record: dict) -> np.ndarray:
    """Bool (size, size): square pixels that lie in the padding, more than one pixel beyond the slice.

    The one-pixel rim keeps edge values, so that undoing never interpolates an edge voxel against `fill`.
    """
    scale, offset = _square_from_slice(record)
    size = record["size"]
    index = np.arange(size)
    far = []
    for axis, n in enumerate(record["shape_zyx"][1:]):
        position = scale[axis] * index + offset[axis]
        far.append((position < -0.5 - scale[axis]) | (position > n - 0.5 + scale[axis]))
    return far[0][:, None] | far[1][None, :]


def slice_volume(volume: np.ndarray, record: dict, interpolation: str = "linear",
                 fill: float = -1.0) -> np.ndarray:
    """(nz, ny, nx) volume -> (n, size, size) float32 slices at `record["slices"]`."""
    volume = np.asarray(volume)
    if list(volume.shape) != record["shape_zyx"]:
        raise ValueError(f"volume shape {volume.shape} differs from the record's {record['shape_zyx']}")
    scale, offset = _square_from_slice(record)
    size = record["size"]
    stack = _smooth(volume[record["slices"]], record.get("antialias_px", (0.0, 0.0)), interpolation)
    slices = _resample_stack(stack, scale, offset, (size, size), _order(interpolation))
    slices[:, _outside(record)] = fill
    return slices


def unslice_volume(slices: np.ndarray, record: dict, interpolation: str = "linear",
                   fill: float = -1.0) -> np.ndarray:
    """(n, size, size) slices -> (nz, ny, nx) float32 on the original grid; slices not kept take `fill`."""
    slices = np.asarray(slices)
    size = record["size"]
    if slices.shape != (len(record["slices"]), size, size):
        raise ValueError(f"slices of shape {slices.shape}; the record expects "
                         f"{(len(record['slices']), size, size)}")
    scale, offset = _square_from_slice(record)
    nz, ny, nx = record["shape_zyx"]
    volume = np.full((nz, ny, nx), fill, np.float32)
    # Inverse of (i, j) = scale * (r, c) + offset.
    volume[record["slices"]] = _resample_stack(slices, 1.0 / scale, -offset / scale, (ny, nx),
                                               _order(interpolation))
    return volume


def slice_image(image, body: np.ndarray | None = None, size: int = SLICE_SIZE, interpolation: str = "linear",
                fill: float = -1.0) -> tuple[np.ndarray, dict]:
    """`SimpleITK.Image` -> ((n, size, size) float32 slices, record with origin/direction/spacing).

    The image's values are sliced as they are: normalise them first (diffma_cli.data.normalise) so that
    `fill` means the same as the background.
    """
    import SimpleITK as sitk

    volume = sitk.GetArrayFromImage(image)
    record = plan_slicing(volume.shape, image.GetSpacing(), body, size,
                          {"origin": image.GetOrigin(), "direction": image.GetDirection()})
    return slice_volume(volume, record, interpolation, fill), record


def unslice_image(slices: np.ndarray, record: dict, interpolation: str = "linear", fill: float = -1.0):
    """(n, size, size) slices -> float32 `SimpleITK.Image` on the original grid (size, spacing, origin...)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(unslice_volume(slices, record, interpolation, fill))
    image.SetSpacing(record["spacing_xyz"])
    if "origin" in record:
        image.SetOrigin(record["origin"])
    if "direction" in record:
        image.SetDirection(record["direction"])
    return image


# Body threshold: between air/lung (< -700 HU) and fat (about -100 HU); SynthRAD's masks are dilated body
# outlines, hence the margin (mm, in-plane).
BODY_THRESHOLD_HU = -500.0
BODY_MARGIN_MM = 5.0


def body_mask_from_ct(ct_hu: np.ndarray, spacing_xyz, threshold_hu: float = BODY_THRESHOLD_HU,
                      margin_mm: float = BODY_MARGIN_MM) -> np.ndarray:
    """Body mask (bool (z, y, x)) of a CT in HU: threshold, largest 3-D component, holes filled, dilated.

    Holes are filled per axial slice (air in sinuses, bowel or lungs is inside the body); the dilation adds
    `margin_mm` in-plane like SynthRAD's dilated masks. An all-air CT gives an all-False mask.
    """
    from scipy import ndimage

    body = np.asarray(ct_hu) > threshold_hu
    labels, count = ndimage.label(body)
    if count == 0:
        return body
    sizes = np.bincount(labels.ravel())[1:]
    body = labels == (int(np.argmax(sizes)) + 1)
    for z in range(body.shape[0]):
        body[z] = ndimage.binary_fill_holes(body[z])
    radius = np.maximum(np.round(margin_mm / np.asarray(spacing_xyz[:2], float)).astype(int), 0)
    if radius.max() > 0:
        ry, rx = radius[1], radius[0]
        yy, xx = np.ogrid[-ry:ry + 1, -rx:rx + 1]
        disc = (yy / max(ry, 1)) ** 2 + (xx / max(rx, 1)) ** 2 <= 1.0
        body = ndimage.binary_dilation(body, structure=disc[None])
    return body
