"""Procedural brain and pelvis phantoms: paired CT (HU), MR (scanner units) and body mask on one grid.

Each phantom is a label volume of named tissues painted from simple shapes (ellipsoids, shells, tubes)
whose sizes, positions and thicknesses are drawn per case, plus smooth random fields that bend surfaces
and fold the cortex. CT and MR are then rendered from the labels with separate tissue tables:

- CT: HU per tissue with a per-case offset, bone density texture, slight partial-volume blur and Gaussian
  noise; int16, air at about -1000 HU.
- MR: T1-like relative intensity per tissue (fat and fatty marrow bright, cortical bone, air and CSF dark,
  white matter brighter than grey) times a per-case scanner gain and a smooth multiplicative bias field,
  with Rician noise; int16 scanner units. Brain centres B and C get contrast enhancement (vessels, dura,
  choroid plexus bright), pelvis centre C is T2-weighted (urine bright) -- as in SynthRAD2023
  (docs/reference.md §5).

The CT->MR mapping is therefore not a function of the CT value: grey and white matter overlap in HU but
not in MR, muscle, prostate, bowel wall and enhancing vessels share HU but not MR, and contrast depends on
the centre. Values are textbook approximations (HU: e.g. Hounsfield-scale tables in Bushberg's "Essential
Physics of Medical Imaging"; T1/T2 ordering from standard MR atlases), not measurements.

Public interface:

- `make_phantom(anatomy, rng, scale=1.0, centre="A") -> Phantom` with arrays (z, y, x): ct int16 HU,
  mr int16, mask uint8, labels uint8 (index into `TISSUES`), plus spacing (x, y, z) mm, origin mm and an
  `info` dict. `scale` < 1 coarsens the grid (spacing / scale) for fast tests; anatomy stays in mm.
- `case_rng(seed, anatomy, index)`: the generator for one case, independent of how many cases are made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ANATOMIES = ("brain", "pelvis")
# SynthRAD2023 Task 1 voxel spacing (x, y, z) in mm (docs/reference.md §5).
SPACING_MM = {"brain": (1.0, 1.0, 1.0), "pelvis": (1.0, 1.0, 2.5)}


@dataclass(frozen=True)
class Tissue:
    """Mean CT in HU and relative MR intensity (T1-like, T2-like; 1 = fat on T1) of one tissue."""

    hu: float
    t1: float
    t2: float


# Index = label value. "enhancing" = vessels, dura and choroid plexus: soft tissue on CT, dark (flow void)
# on native T1, bright after gadolinium.
TISSUES: dict[str, Tissue] = {
    "air": Tissue(-1000.0, 0.0, 0.0),
    "skin": Tissue(30.0, 0.55, 0.40),
    "fat": Tissue(-100.0, 1.00, 0.85),
    "muscle": Tissue(50.0, 0.35, 0.25),
    "cortical_bone": Tissue(1400.0, 0.03, 0.03),
    "marrow": Tissue(350.0, 0.80, 0.60),
    "csf": Tissue(8.0, 0.10, 1.00),
    "grey_matter": Tissue(38.0, 0.45, 0.60),
    "white_matter": Tissue(29.0, 0.68, 0.45),
    "vitreous": Tissue(10.0, 0.12, 0.95),
    "enhancing": Tissue(45.0, 0.22, 0.20),
    "disc": Tissue(80.0, 0.30, 0.55),
    "spinal_cord": Tissue(35.0, 0.55, 0.50),
    "gas": Tissue(-950.0, 0.01, 0.01),
    "urine": Tissue(8.0, 0.08, 1.00),
    "prostate": Tissue(42.0, 0.38, 0.50),
    "prostate_peripheral": Tissue(40.0, 0.38, 0.80),
    "uterus": Tissue(45.0, 0.42, 0.60),
    "bowel_wall": Tissue(42.0, 0.42, 0.35),
    "bowel_content": Tissue(10.0, 0.30, 0.45),
}
LABEL = {name: index for index, name in enumerate(TISSUES)}
BONE = ("cortical_bone", "marrow")
# T1 with gadolinium: enhancing tissue becomes bright (brain centres B and C, docs/reference.md §5).
CONTRAST_T1 = {"enhancing": 0.95}


@dataclass
class Phantom:
    """One synthetic case; arrays are (z, y, x), spacing (x, y, z) mm, origin (x, y, z) mm."""

    ct: np.ndarray
    mr: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    info: dict = field(default_factory=dict)
    #: The MR before noise (tissue table x texture x bias field x gain, float32 scanner units): the best
    #: prediction any model could make from the anatomy (the oracle of docs/quality.md).
    mr_noise_free: np.ndarray | None = None


def case_rng(seed: int, anatomy: str, index: int) -> np.random.Generator:
    """Random generator of case `index` (0-based) of `anatomy` for `seed`: same case whatever else is made."""
    return np.random.default_rng([int(seed), ANATOMIES.index(anatomy), int(index)])


class _Canvas:
    """A label volume with mm coordinates of voxel centres, painted shape by shape (later paint wins)."""

    def __init__(self, shape_zyx, spacing_xyz):
        self.labels = np.zeros(shape_zyx, np.uint8)
        self.spacing = spacing_xyz
        # 1-D voxel-centre coordinates in mm from the grid corner, broadcastable as (z, y, x).
        self.z = ((np.arange(shape_zyx[0]) + 0.5) * spacing_xyz[2]).astype(np.float32)[:, None, None]
        self.y = ((np.arange(shape_zyx[1]) + 0.5) * spacing_xyz[1]).astype(np.float32)[None, :, None]
        self.x = ((np.arange(shape_zyx[2]) + 0.5) * spacing_xyz[0]).astype(np.float32)[None, None, :]

    def box(self, centre, half):
        """Index slices (z, y, x) of the box centre ± half (both (x, y, z) mm), clipped to the grid."""
        slices = []
        for axis in (2, 1, 0):  # array order z, y, x; centre and half are (x, y, z)
            n, step = self.labels.shape[2 - axis], self.spacing[axis]
            lo = int(np.floor((centre[axis] - half[axis]) / step))
            hi = int(np.ceil((centre[axis] + half[axis]) / step)) + 1
            slices.append(slice(min(max(lo, 0), n), min(max(hi, 0), n)))
        return tuple(slices)

    def coords(self, box):
        """(x, y, z) mm coordinates broadcastable over the box."""
        return self.x[:, :, box[2]], self.y[:, box[1], :], self.z[box[0], :, :]

    def ellipsoid(self, centre, radii, box=None):
        """Normalised ellipsoid radius (< 1 inside) over a box (default: the ellipsoid's bounding box)."""
        box = box or self.box(centre, radii)
        x, y, z = self.coords(box)
        r2 = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
        return box, np.sqrt(r2 + ((z - centre[2]) / radii[2]) ** 2)

    def tube(self, p0, p1, radius):
        """Distance (mm) to the segment p0-p1 over the tube's bounding box."""
        p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
        lo, hi = np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius
        box = self.box((lo + hi) / 2, (hi - lo) / 2)
        x, y, z = self.coords(box)
        d = p1 - p0
        t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d)
        t = np.clip(t, 0.0, 1.0)
        return box, np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2
                            + (z - p0[2] - t * d[2]) ** 2)

    def paint(self, tissue: str, where, box=None, over: tuple[str, ...] | None = None):
        """Set `tissue` where `where` holds (within `box`), optionally only over the listed tissues."""
        region = self.labels if box is None else self.labels[box]
        where = np.broadcast_to(where, region.shape)
        if over is not None:
            where = where & np.isin(region, [LABEL[name] for name in over])
        region[where] = LABEL[tissue]


def _wave(rng, n: int, spacing: float, wavelength_mm: float, terms: int = 3) -> np.ndarray:
    """A smooth random 1-D profile (unit-ish amplitude) over n voxels: a few sinusoids >= wavelength_mm."""
    t = (np.arange(n) + 0.5) * spacing
    profile = np.zeros(n, np.float32)
    for _ in range(terms):
        wavelength = wavelength_mm * rng.uniform(1.0, 3.0)
        profile += rng.normal() * np.sin(2 * np.pi * t / wavelength + rng.uniform(0, 2 * np.pi))
    return profile / np.sqrt(terms)


def _smooth_field(rng, canvas: _Canvas, wavelength_mm: float, rank: int = 3, box=None) -> np.ndarray:
    """Smooth random 3-D field (about unit variance) over the grid or a box of it.

    A sum of `rank` separable products of 1-D waves, computed as one matrix product (z*y, rank) @ (rank, x),
    which is much faster than broadcasting.
    """
    nz, ny, nx = canvas.labels[box or (slice(None),) * 3].shape
    sx, sy, sz = canvas.spacing
    zy = np.stack([(_wave(rng, nz, sz, wavelength_mm)[:, None] * _wave(rng, ny, sy, wavelength_mm)[None, :])
                   .ravel() for _ in range(rank)], axis=1)
    gx = np.stack([_wave(rng, nx, sx, wavelength_mm) for _ in range(rank)], axis=0)
    return (zy @ (gx / np.float32(np.sqrt(rank)))).reshape(nz, ny, nx)


def _folds(rng, canvas: _Canvas, wavelength_mm: float, box=None) -> np.ndarray:
    """Gyroid-like folding field: a sum of three phase-shifted sinusoids, one per axis (range -3..3).

    Its near-zero level set is a convoluted sheet; thin bands around it make the cortical sulci.
    """
    x, y, z = canvas.coords(box or (slice(None),) * 3)
    k = 2 * np.pi / wavelength_mm
    phases = rng.uniform(0, 2 * np.pi, 3)
    tilt = rng.uniform(0.7, 1.3, 3)
    return (np.sin(k * tilt[0] * x + phases[0]) + np.sin(k * tilt[1] * y + phases[1])
            + np.sin(k * tilt[2] * z + phases[2])).astype(np.float32)


def _paint_bone(canvas: _Canvas, inner_mm, box, cortex_mm: float):
    """Cortical shell of `cortex_mm` with marrow inside, given depth below the bone surface (mm, >0 in)."""
    canvas.paint("cortical_bone", inner_mm > 0, box)
    canvas.paint("marrow", inner_mm > cortex_mm, box)


def _ray_depth(r: np.ndarray, distance_mm: np.ndarray) -> np.ndarray:
    """Depth below an ellipsoid's surface along the ray from its centre: (1 - r) * |p| / r (mm)."""
    return (1.0 - r) * distance_mm / np.maximum(r, 1e-3)


def _paint_brain(rng, canvas: _Canvas, centre, radii) -> np.ndarray:
    """Paint a head and neck; return the depth below the skin (mm, < 0 outside) for the body mask."""
    cx, cy, cz = centre
    a, b, c = radii
    x, y, z = canvas.x, canvas.y, canvas.z
    bumps = _smooth_field(rng, canvas, 60.0)
    # Head: ellipsoid with a bumpy surface (a few % of the radius).
    u, v, w = (x - cx) / a, (y - cy) / b, (z - cz) / c
    r = np.sqrt(u * u + v * v + w * w) * (1.0 + 0.025 * bumps)
    head = _ray_depth(r, np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2))
    # Neck: an elliptic cylinder below the skull base, slightly posterior.
    na, nb, ny0 = 0.58 * a, 0.55 * b, cy + 0.18 * b
    rn = np.sqrt(((x - cx) / na) ** 2 + ((y - ny0) / nb) ** 2) * (1.0 + 0.02 * bumps)
    neck = np.where(z < cz - 0.2 * c, _ray_depth(rn, np.sqrt((x - cx) ** 2 + (y - ny0) ** 2)), -np.inf)
    depth = np.maximum(head, neck).astype(np.float32)
    del neck, rn

    skin = rng.uniform(1.5, 2.5)
    fat = skin + rng.uniform(2.0, 5.0) * (1.0 + 0.3 * bumps)
    canvas.paint("skin", depth > 0)
    canvas.paint("fat", depth > skin)
    canvas.paint("muscle", depth > fat)  # face, neck and temporal muscles under the fat

    skull_base = cz - rng.uniform(0.25, 0.35) * c
    cranium = z > skull_base
    outer = fat + np.where(np.abs(u) > 0.6, rng.uniform(3.0, 7.0), 0.5)  # temporalis muscle on the sides
    table, diploe = rng.uniform(1.5, 2.5), rng.uniform(2.0, 4.0)
    inner = outer + 2 * table + diploe
    canvas.paint("cortical_bone", (depth > outer) & cranium)
    canvas.paint("marrow", (depth > outer + table) & (depth < inner - table) & cranium)
    canvas.paint("csf", (depth > inner) & cranium)
    brain_start = inner + rng.uniform(1.5, 3.0)
    brain_depth = np.where(cranium & (z > skull_base + 4.0), depth - brain_start, -1.0).astype(np.float32)
    brain = brain_depth > 0
    canvas.paint("grey_matter", brain)
    # Cortex: grey matter about 3 mm thick at the surface and lining the sulci, which are CSF sheets
    # along the folding field's zero set; a smooth warp keeps the folds from looking like a lattice.
    folds = _folds(rng, canvas, rng.uniform(24.0, 32.0)) + 0.8 * _smooth_field(rng, canvas, 40.0)
    cortex, sulcus = rng.uniform(2.5, 3.5), rng.uniform(12.0, 18.0)
    canvas.paint("white_matter", brain_depth > cortex)
    canvas.paint("grey_matter", brain & (brain_depth < sulcus) & (np.abs(folds) < 0.45))
    canvas.paint("csf", brain & (brain_depth < sulcus - 4.0) & (np.abs(folds) < 0.1))
    del folds
    # Falx (midline dura) with the superior sagittal sinus on top: enhancing tissue.
    canvas.paint("enhancing", brain & (np.abs(x - cx) < 1.0) & (z > cz - 0.1 * c))
    canvas.paint("enhancing", (np.abs(x - cx) < 3.0) & (depth > inner) & (depth < brain_start) & cranium
                 & (z > cz + 0.2 * c) & (np.abs(v) < 0.8))

    # Deep grey nuclei and lateral ventricles (size varies with age), third ventricle, choroid plexus.
    vent = rng.uniform(0.7, 1.4)
    for side in (-1, 1):
        box, rr = canvas.ellipsoid((cx + side * 0.22 * a, cy - 0.05 * b, cz + 0.05 * c), (11, 16, 12))
        canvas.paint("grey_matter", rr < 1, box)
        centre_v = (cx + side * rng.uniform(6, 10), cy - 0.02 * b, cz + 0.18 * c)
        box, rr = canvas.ellipsoid(centre_v, (5 * vent, 24 * vent, 8 * vent))
        canvas.paint("csf", rr < 1, box)
        canvas.paint("enhancing", rr < 0.35, box)
    box, rr = canvas.ellipsoid((cx, cy, cz + 0.02 * c), (1.5 * vent, 12, 9))
    canvas.paint("csf", rr < 1, box)
    # Cerebellum: finely folded, posterior and inferior.
    ccen, crad = (cx, cy + 0.5 * b, skull_base + 0.18 * c), (0.55 * a, 0.32 * b, 0.2 * c)
    box, rr = canvas.ellipsoid(ccen, crad)
    # Folia: thin grey-matter lamellae stacked along z and bent by the smooth field, white matter inside.
    folia = np.sin(2 * np.pi / rng.uniform(6.0, 9.0) * (canvas.coords(box)[2] + 8.0 * bumps[box]))
    canvas.paint("grey_matter", rr < 1, box, over=("white_matter", "grey_matter"))
    canvas.paint("white_matter", (rr < 0.85) & (folia > 0.3), box, over=("grey_matter",))
    canvas.paint("white_matter", rr < 0.4, box, over=("grey_matter",))
    # Skull base plate.
    box = canvas.box((cx, cy, skull_base), (a, b, 3.0))
    canvas.paint("cortical_bone", np.ones(1, bool), box, over=("csf", "grey_matter", "white_matter"))

    # Eyes in orbital fat; air sinuses walled by bone (frontal, two maxillary, sphenoid).
    for side in (-1, 1):
        eye = (cx + side * 0.42 * a, cy - 0.74 * b, skull_base - 10.0)
        box, rr = canvas.ellipsoid(eye, (16, 16, 14))
        canvas.paint("fat", rr < 1, box, over=("muscle", "cortical_bone", "marrow", "csf", "grey_matter"))
        box, rr = canvas.ellipsoid(eye, (12, 12, 12))
        canvas.paint("vitreous", rr < 1, box)
        sinus = (cx + side * 0.3 * a, cy - 0.6 * b, skull_base - 38.0)
        radius = rng.uniform(11, 16, 3)
        box, rr = canvas.ellipsoid(sinus, radius + 1.5)
        canvas.paint("cortical_bone", rr < 1, box)
        canvas.paint("air", rr < 1 - 1.5 / radius.max(), box)
    for sinus, radius in (((cx, cy - 0.86 * b, cz + 0.08 * c), rng.uniform(6, 11, 3)),
                          ((cx, cy - 0.25 * b, skull_base - 6.0), rng.uniform(8, 12, 3))):
        box, rr = canvas.ellipsoid(sinus, radius + 1.5)
        canvas.paint("cortical_bone", rr < 1, box)
        canvas.paint("air", rr < 1 - 1.5 / radius.max(), box)

    # Mandible: a U-shaped bony band in the lower face.
    box, rr = canvas.ellipsoid((cx, cy - 0.05 * b, skull_base - 68.0), (0.78 * a, 0.85 * b, 12.0))
    _, ry = canvas.coords(box)[:2]
    band = (rr < 1) & (rr > 0.82) & (ry < cy)
    canvas.paint("cortical_bone", band, box, over=("muscle", "fat", "skin"))
    canvas.paint("marrow", band & (rr < 0.96) & (rr > 0.86), box, over=("cortical_bone",))

    # Cervical spine with discs, spinal canal and cord; airway in front of it.
    top = skull_base - 5.0
    spine_y = cy + 0.3 * b
    box, dist = canvas.tube((cx, spine_y, 0.0), (cx, spine_y, top), 9.0)
    zz = canvas.coords(box)[2]
    disc = np.mod(zz - top, rng.uniform(16.0, 19.0)) < 4.0
    canvas.paint("cortical_bone", dist < 9.0, box)
    canvas.paint("marrow", dist < 7.0, box)
    canvas.paint("disc", (dist < 9.0) & disc, box)
    box, dist = canvas.tube((cx, spine_y + 16.0, 0.0), (cx, spine_y + 16.0, top + 10.0), 6.5)
    canvas.paint("csf", dist < 6.5, box)
    canvas.paint("spinal_cord", dist < 4.0, box)
    box, dist = canvas.tube((cx, cy - 0.05 * b, 0.0), (cx, cy - 0.05 * b, skull_base - 25.0), 8.0)
    canvas.paint("air", dist < rng.uniform(5.0, 8.0), box)
    canvas.paint("air", depth <= 0)  # shapes near the surface (sinus walls, mandible) stay inside the skin
    return depth


def _paint_pelvis(rng, canvas: _Canvas, centre, radii, z_hip: float, male: bool) -> np.ndarray:
    """Paint a pelvis; return the depth below the skin (mm, < 0 outside) for the body mask.

    Skeletal sizes are absolute mm times a per-case factor (bones do not scale with body fat); `z_hip` is
    the height of the femoral head centres above the grid's lower edge.
    """
    cx, cy = centre[:2]
    a0, b0 = radii[:2]
    x, y, z = canvas.x, canvas.y, canvas.z
    bumps = _smooth_field(rng, canvas, 80.0)
    # Body: elliptic cylinder, widest at the hips.
    hips = 1.0 + 0.06 * np.exp(-(((z - z_hip) / 90.0) ** 2))
    r = np.sqrt(((x - cx) / (a0 * hips)) ** 2 + ((y - cy) / b0) ** 2) * (1.0 + 0.02 * bumps)
    depth = _ray_depth(r, np.sqrt((x - cx) ** 2 + (y - cy) ** 2)).astype(np.float32)
    del r
    skin = rng.uniform(1.5, 2.5)
    fat = skin + rng.uniform(8.0, 30.0) * (1.0 + 0.25 * bumps + 0.3 * (y < cy))
    canvas.paint("skin", depth > 0)
    canvas.paint("fat", depth > skin)
    canvas.paint("muscle", depth > fat)
    # Intermuscular fat septa along the near-zero sheets of a folding field.
    # Intermuscular fat septa between muscle compartments: radial sheets from the body axis (2-D).
    septa = np.zeros(canvas.labels.shape[1:], bool)
    for angle in rng.uniform(0, 2 * np.pi, rng.integers(6, 11)):
        along = (x[0] - cx) * np.cos(angle) + (y[0] - cy) * np.sin(angle)
        across = (x[0] - cx) * np.sin(angle) - (y[0] - cy) * np.cos(angle)
        septa |= (np.abs(across + 0.1 * along) < rng.uniform(1.0, 2.5)) & (along > rng.uniform(30.0, 80.0))
    canvas.paint("fat", septa[None] & (depth > fat), over=("muscle",))
    k = rng.uniform(0.92, 1.08)  # skeletal size factor
    cavity = (cx, cy + 5.0, z_hip + 40.0 * k)
    box, rr = canvas.ellipsoid(cavity, (60.0 * k, 65.0 * k, 120.0 * k))
    canvas.paint("fat", rr < 1, box, over=("muscle",))

    # Bowel loops in the upper anterior cavity: random-walk tubes with a wall, fluid content and, in some,
    # gas rising anteriorly (the patient lies supine: anterior is up).
    region_c = np.array([cx, cy - 0.25 * b0, z_hip + 150.0 * k])
    region_r = np.array([0.45 * a0, 0.4 * b0, 80.0 * k])
    for _ in range(rng.integers(4, 8)):
        radius = rng.uniform(9.0, 14.0)
        gas = rng.random() < 0.4
        point = region_c + rng.uniform(-0.7, 0.7, 3) * region_r
        heading = rng.normal(size=3)
        for _ in range(rng.integers(6, 12)):
            heading = heading / np.linalg.norm(heading) + 0.8 * rng.normal(size=3)
            heading /= np.linalg.norm(heading)
            step = point + rng.uniform(15.0, 30.0) * heading
            if np.sum(((step - region_c) / region_r) ** 2) > 1:  # stay in the region: turn back
                heading, step = -heading, point - rng.uniform(15.0, 30.0) * heading
            box, dist = canvas.tube(point, step, radius)
            canvas.paint("bowel_wall", dist < radius, box, over=("fat", "muscle", "bowel_content", "gas"))
            canvas.paint("bowel_content", dist < radius - 2.5, box, over=("bowel_wall",))
            if gas:
                level = (point[1] + step[1]) / 2 - 0.3 * radius
                canvas.paint("gas", (dist < radius - 2.5) & (canvas.coords(box)[1] < level), box,
                             over=("bowel_content",))
            point = step

    for side in (-1, 1):
        hip = np.array([cx + side * 90.0 * k, cy - 5.0, z_hip])
        head_r = rng.uniform(22.0, 26.0) * k
        # Acetabulum: a bony cup around the medial-upper femoral head, 2 mm joint space.
        box, rr = canvas.ellipsoid(hip, (head_r + 9.0,) * 3)
        hx, _, hz = canvas.coords(box)
        dist = rr * (head_r + 9.0)
        cup = (side * (hx - hip[0]) < 0.4 * head_r) & (hz > hip[2] - 8.0)
        inner = np.minimum(dist - head_r - 2.0, head_r + 9.0 - dist)
        _paint_bone(canvas, np.where(cup, inner, -1.0), box, 1.5)
        box, rr = canvas.ellipsoid(hip, (head_r,) * 3)
        _paint_bone(canvas, (1.0 - rr) * head_r, box, 2.5)
        trochanter = hip + np.array([side * 45.0 * k, 5.0, -35.0 * k])
        for p0, p1, radius, cortex in ((hip, trochanter, 14.0 * k, 3.0),
                                       (trochanter, trochanter + [side * -10.0, 5.0, -400.0], 14.0 * k, 5.0),
                                       (trochanter, trochanter + [0.0, 0.0, 8.0], 18.0 * k, 2.0)):
            box, dist = canvas.tube(p0, p1, radius)
            _paint_bone(canvas, radius - dist, box, cortex)
        # Pubic ramus to the symphysis, ischium down and back, iliac wing up and out.
        symphysis = np.array([cx + side * 4.0, cy - 70.0 * k, z_hip - 15.0 * k])
        for p0, p1, radius in ((hip + [side * -12.0, -15.0, -5.0], symphysis, 10.0 * k),
                               (hip + [side * -8.0, 10.0, -15.0],
                                [cx + side * 55.0 * k, cy + 35.0, z_hip - 60.0 * k], 12.0 * k)):
            box, dist = canvas.tube(p0, p1, radius)
            _paint_bone(canvas, radius - dist, box, 2.0)
        wing_c = (cx + side * 40.0 * k, cy + 10.0, z_hip + 70.0 * k)
        wing_r = np.array([85.0, 70.0, 85.0]) * k
        box, rr = canvas.ellipsoid(wing_c, wing_r)
        wx, wy, wz = canvas.coords(box)
        thickness = rng.uniform(8.0, 12.0)
        shell = (np.abs(rr - 1.0) * wing_r[1] < thickness / 2) & (side * (wx - cx) > 35.0 * k) \
            & (wz > z_hip + 10.0) & (wy > cy - 40.0)
        _paint_bone(canvas, np.where(shell, thickness / 2 - np.abs(rr - 1.0) * wing_r[1], -1), box, 1.5)
    # Sacrum, lumbar vertebra with discs and spinal canal above it.
    box, rr = canvas.ellipsoid((cx, cy + 75.0 * k, z_hip + 70.0 * k), (45.0 * k, 18.0 * k, 65.0 * k))
    _paint_bone(canvas, (1.0 - rr) * 18.0 * k, box, 2.0)
    spine = (cx, cy + 50.0 * k, z_hip + 135.0 * k)
    box, dist = canvas.tube(spine, (cx, spine[1], spine[2] + 400.0), 22.0 * k)
    disc = np.mod(canvas.coords(box)[2] - spine[2], 36.0 * k) < 9.0 * k
    _paint_bone(canvas, 22.0 * k - dist, box, 2.0)
    canvas.paint("disc", (dist < 22.0 * k) & disc, box)
    box, dist = canvas.tube((cx, spine[1] + 35.0 * k, spine[2]), (cx, spine[1] + 35.0 * k, spine[2] + 400.0),
                            9.0 * k)
    canvas.paint("csf", dist < 9.0 * k, box)

    # Rectum in its mesorectal fat, gas rising anteriorly (the patient lies supine: anterior is up).
    rectum_r = rng.uniform(13.0, 20.0)
    p0, p1 = (cx, cy + 45.0 * k, z_hip - 60.0 * k), (cx + rng.uniform(-8, 8), cy + 55.0 * k, z_hip + 70.0 * k)
    box, dist = canvas.tube(p0, p1, rectum_r + 12.0)
    canvas.paint("fat", dist < rectum_r + rng.uniform(6.0, 12.0), box, over=("muscle", "fat"))
    canvas.paint("bowel_wall", dist < rectum_r, box)
    canvas.paint("bowel_content", dist < rectum_r - 3.0, box)
    ry = canvas.coords(box)[1]
    gas_level = cy + 50.0 * k - rng.uniform(0.0, 0.6) * rectum_r
    canvas.paint("gas", (dist < rectum_r - 3.0) & (ry < gas_level), box)
    # Bladder (its filling varies), then prostate or uterus.
    bladder_r = np.array([rng.uniform(30, 55), rng.uniform(25, 45), rng.uniform(20, 45)])
    bladder_c = (cx, cy - 45.0 * k, z_hip + 10.0 + bladder_r[2])
    box, rr = canvas.ellipsoid(bladder_c, bladder_r)
    canvas.paint("muscle", rr < 1, box)
    canvas.paint("urine", rr < 1 - 3.0 / bladder_r.min(), box)
    if male:
        prostate_r = rng.uniform(17.0, 24.0)
        prostate_c = (cx, cy - 10.0, z_hip - 25.0 * k)
        box, rr = canvas.ellipsoid(prostate_c, (prostate_r,) * 3)
        canvas.paint("prostate", rr < 1, box)
        py = canvas.coords(box)[1]
        canvas.paint("prostate_peripheral", (rr < 1) & (rr > 0.55) & (py > prostate_c[1]), box)
    else:
        uterus_c = (cx + rng.uniform(-10, 10), cy + 15.0, bladder_c[2] + bladder_r[2] + 10.0)
        box, rr = canvas.ellipsoid(uterus_c, (rng.uniform(25, 40), rng.uniform(20, 30), rng.uniform(35, 50)))
        canvas.paint("uterus", rr < 1, box)
    canvas.paint("air", depth <= 0)  # bones and organs stay inside the skin
    return depth


def _render_ct(rng, canvas: _Canvas, anatomy: str) -> tuple[np.ndarray, dict]:
    """CT in HU (int16) from the labels: per-case tissue offsets, bone texture, blur, noise."""
    from scipy import ndimage

    table = np.array([t.hu for t in TISSUES.values()], np.float32)
    soft = np.array([name not in ("air", "gas", *BONE) for name in TISSUES])
    table[soft] += rng.normal(0.0, 3.0, int(soft.sum()))  # scanner calibration and tissue composition
    density = rng.uniform(0.8, 1.25)  # bone mineral density of this patient
    table[LABEL["cortical_bone"]] *= density
    table[LABEL["marrow"]] = rng.uniform(200.0, 450.0)
    ct = table[canvas.labels]
    bone = np.isin(canvas.labels, [LABEL[name] for name in BONE])
    ct[bone] += 120.0 * _smooth_field(rng, canvas, 15.0)[bone]
    ndimage.gaussian_filter(ct, 0.6, truncate=2.0, output=ct)  # partial volume at edges
    noise = rng.uniform(8.0, 20.0)
    ct += rng.standard_normal(ct.shape, dtype=np.float32) * noise
    # CT scanners store -1024..3071 HU in 12 bits.
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16), {"ct_noise_hu": round(noise, 2),
                                                                 "bone_density": round(density, 3)}


def _render_mr(rng, canvas: _Canvas, weighting: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """MR in scanner units (int16): tissue table x texture x bias field x gain, with Rician noise; and the
    same before the noise (float32)."""
    from scipy import ndimage

    table = np.array([t.t2 if weighting == "T2" else t.t1 for t in TISSUES.values()], np.float32)
    if weighting == "T1+Gd":
        for name, value in CONTRAST_T1.items():
            table[LABEL[name]] = value
    table *= rng.normal(1.0, 0.04, table.shape).astype(np.float32)  # per-case relaxation differences
    mr = table[canvas.labels]
    mr *= 1.0 + 0.04 * _smooth_field(rng, canvas, 12.0)  # tissue texture
    ndimage.gaussian_filter(mr, 0.6, truncate=2.0, output=mr)
    bias = np.exp(0.15 * _smooth_field(rng, canvas, 150.0, rank=2))  # receive-coil sensitivity
    gain = rng.uniform(300.0, 1500.0)  # arbitrary scanner units
    mr *= bias * np.float32(gain)
    noise_free = mr.astype(np.float32, copy=True)
    sigma = np.float32(rng.uniform(0.01, 0.03) * gain)
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
    real = mr + sigma * rng.standard_normal(mr.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(mr.shape, dtype=np.float32)
    mr = np.sqrt(real * real + imaginary * imaginary)
    return np.clip(np.rint(mr), 0, 32767).astype(np.int16), noise_free, {"mr_gain": round(gain, 1),
                                                                         "mr_noise": round(float(sigma), 2)}


def _grid_shape(extent_xyz, spacing_xyz) -> list[int]:
    """(z, y, x) voxel counts covering an extent in mm (at least 8 per axis so that coarse grids work)."""
    return [max(int(round(e / s)), 8) for e, s in zip(extent_xyz[::-1], spacing_xyz[::-1], strict=True)]


def make_phantom(anatomy: str, rng: np.random.Generator, scale: float = 1.0, centre: str = "A") -> Phantom:
    """One random brain or pelvis case (see the module docstring); `scale` < 1 coarsens the grid."""
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy {anatomy!r}; choose one of {ANATOMIES}")
    spacing = tuple(s / scale for s in SPACING_MM[anatomy])
    info = {"anatomy": anatomy, "centre": centre}
    if anatomy == "brain":
        radii = (rng.uniform(66, 78), rng.uniform(86, 100), rng.uniform(78, 92))  # head half-axes, mm
        extent = (2 * radii[0] + rng.uniform(20, 50), 2 * radii[1] + rng.uniform(20, 50),
                  radii[2] + rng.uniform(85, 110))  # mm: head, face and upper neck
        shape = _grid_shape(extent, spacing)
        canvas = _Canvas(shape, spacing)
        centre_mm = (shape[2] * spacing[0] / 2 + rng.uniform(-5, 5),
                     shape[1] * spacing[1] / 2 + rng.uniform(-5, 5),
                     shape[0] * spacing[2] - radii[2] - rng.uniform(3, 12))
        depth = _paint_brain(rng, canvas, centre_mm, radii)
        weighting = "T1" if centre == "A" else "T1+Gd"
    else:
        radii = (rng.uniform(165, 240), rng.uniform(105, 170))  # body half-axes, mm
        extent = (2 * radii[0] + rng.uniform(40, 100), 2 * radii[1] + rng.uniform(30, 80),
                  rng.uniform(84, 153) * SPACING_MM["pelvis"][2])
        shape = _grid_shape(extent, spacing)
        canvas = _Canvas(shape, spacing)
        centre_mm = (shape[2] * spacing[0] / 2 + rng.uniform(-10, 10),
                     shape[1] * spacing[1] / 2 + rng.uniform(-8, 8))
        male = bool(rng.random() < 0.6)
        z_hip = extent[2] * rng.uniform(0.3, 0.45)
        depth = _paint_pelvis(rng, canvas, centre_mm, radii, z_hip, male)
        weighting = "T2" if centre == "C" else "T1"
        info["sex"] = "male" if male else "female"
    info["mr_weighting"] = weighting
    # SynthRAD's mask is the body outline dilated by a few mm.
    mask = (depth > -rng.uniform(3.0, 8.0)).astype(np.uint8)
    del depth
    ct, ct_info = _render_ct(rng, canvas, anatomy)
    mr, mr_noise_free, mr_info = _render_mr(rng, canvas, weighting)
    origin = tuple(float(v) for v in (-shape[2] * spacing[0] / 2 + rng.uniform(-30, 30),
                                      -shape[1] * spacing[1] / 2 + rng.uniform(-30, 30),
                                      rng.uniform(-250.0, 50.0)))
    info.update(ct_info, **mr_info, shape_zyx=list(shape), spacing_xyz=list(spacing))
    return Phantom(ct=ct, mr=mr, mask=mask, labels=canvas.labels, spacing=spacing, origin=origin, info=info,
                   mr_noise_free=mr_noise_free)
