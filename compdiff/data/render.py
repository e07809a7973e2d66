"""A small numpy ray caster for CLEVR-like scenes (no Blender needed).

A scene is 1 to a few objects (cubes by default, as in the CLEVR experiments of
"Reduce, Reuse, Recycle", Du et al. 2023, sec. 5.2; spheres and vertical cylinders
optional) with one of the 8 CLEVR colours and one of the 2 CLEVR sizes, resting on
an infinite floor plane ``z = 0``. World frame: ``x`` to the right, ``y`` away from the
camera, ``z`` up. A fixed pinhole camera looks down at the floor at an angle (like
CLEVR's). Shading is Lambertian from one directional light plus ambient, with cast
shadows (on the floor and on other objects) from a shadow ray per sample.

Rendering casts ``(resolution * supersample) ** 2`` rays (vectorized over rays and
objects), takes the nearest hit, shades it, and box-filters ``supersample x supersample``
blocks down to the output resolution (anti-aliasing).

Image-plane convention (used for :attr:`Scene.centers` and :func:`project`):
``(u, v) = (column / width, row / height)`` in continuous pixel coordinates, ``u`` to
the right and ``v`` downward; pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``
so its centre is at ``((col + 0.5) / R, (row + 0.5) / R)``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

SHAPES = ("cube", "sphere", "cylinder")

# The 8 CLEVR colours (RGB values of CLEVR's properties.json, divided by 255).
COLORS: dict[str, tuple[float, float, float]] = {
    "gray": (87 / 255, 87 / 255, 87 / 255),
    "red": (173 / 255, 35 / 255, 35 / 255),
    "blue": (42 / 255, 75 / 255, 215 / 255),
    "green": (29 / 255, 105 / 255, 20 / 255),
    "brown": (129 / 255, 74 / 255, 25 / 255),
    "purple": (129 / 255, 38 / 255, 192 / 255),
    "cyan": (41 / 255, 208 / 255, 208 / 255),
    "yellow": (255 / 255, 238 / 255, 51 / 255),
}

# Object half-extent in floor units (CLEVR uses radius 0.35 / 0.7). Every shape is
# 2 * half tall: a cube of side 2 * half, a sphere of radius half, a cylinder of radius half.
SIZES: dict[str, float] = {"small": 0.35, "large": 0.7}

MAX_OBJECTS = 10  # more than this cannot be placed without overlap in the floor region
# Floor positions are proposed uniformly in this rectangle (a bit more than the visible
# floor) and kept only if the whole object is in view.
FLOOR_X_RANGE = (-5.2, 5.2)
FLOOR_Y_RANGE = (-3.4, 7.4)
IMAGE_MARGIN = 0.035  # every object's bounding volume projects inside [m, 1 - m]^2 (>1 px at 32)
MIN_GAP = 0.08  # extra floor distance between two objects' bounding circles

# Camera: a pinhole at CAMERA_POS looking at CAMERA_TARGET, vertical = horizontal FOV.
CAMERA_POS = np.array([0.0, -7.0, 8.5])
CAMERA_TARGET = np.array([0.0, 0.5, 0.0])
FOV_DEG = 36.0

LIGHT_DIR = np.array([-0.45, -0.35, 0.82])  # direction *towards* the light
LIGHT_DIR = LIGHT_DIR / np.linalg.norm(LIGHT_DIR)
AMBIENT = 0.35
DIFFUSE = 0.75
FLOOR_ALBEDO = np.array([0.62, 0.62, 0.60])

_EPS = 1e-4


def _camera_frame():
    fwd = CAMERA_TARGET - CAMERA_POS
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right = right / np.linalg.norm(right)
    up = np.cross(right, fwd)
    return fwd, right, up


_FWD, _RIGHT, _UP = _camera_frame()
_TAN = float(np.tan(np.deg2rad(FOV_DEG) / 2))


@dataclasses.dataclass(frozen=True)
class Scene:
    """A CLEVR-like scene with ``n`` objects (see the module docstring for conventions)."""

    shape: np.ndarray  # [n] int32 index into SHAPES
    color: np.ndarray  # [n] int32 index into list(COLORS)
    size: np.ndarray  # [n] int32 index into list(SIZES)
    floor_xy: np.ndarray  # [n, 2] float32 position on the floor
    rotation: np.ndarray  # [n] float32 angle about the vertical axis (radians)
    centers: np.ndarray  # [n, 2] float32 image-plane (u, v) of each object's 3D centre

    @property
    def num_objects(self) -> int:
        return int(self.shape.shape[0])

    def select(self, keep) -> Scene:
        """The scene with only the objects ``keep`` (an index array or boolean mask)."""
        return Scene(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})


def project(floor_points_3d) -> np.ndarray:
    """Camera projection of world points ``[..., 3]`` (or floor points ``[..., 2]``, z = 0).

    Returns ``[..., 2]`` float image-plane ``(u, v)``: ``u = column / width`` to the right,
    ``v = row / height`` downward (``[0, 1]^2`` is the image).
    """
    p = np.asarray(floor_points_3d, dtype=np.float64)
    if p.shape[-1] == 2:
        p = np.concatenate([p, np.zeros(p.shape[:-1] + (1,))], axis=-1)
    if p.shape[-1] != 3:
        raise ValueError(f"project expects points [..., 3] or [..., 2], got shape {p.shape}")
    rel = p - CAMERA_POS
    z = rel @ _FWD
    if np.any(z <= 0):
        raise ValueError("project: a point lies behind the camera")
    u = 0.5 * (1.0 + (rel @ _RIGHT) / (z * _TAN))
    v = 0.5 * (1.0 - (rel @ _UP) / (z * _TAN))
    return np.stack([u, v], axis=-1)


def _footprint_radius(shape: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Radius of a floor circle containing the object's footprint at any rotation."""
    return np.where(shape == SHAPES.index("cube"), half * np.sqrt(2.0), half)


def _bounds_uv(xy: np.ndarray, radius: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Image-plane bounding boxes ``[k, 4]`` (umin, vmin, umax, vmax) of the bounding boxes
    ``[x +- r] x [y +- r] x [0, 2 half]`` (a superset of the object's pixels)."""
    s = np.array([-1.0, 1.0])
    cx = xy[:, 0, None, None, None] + s[None, :, None, None] * radius[:, None, None, None]
    cy = xy[:, 1, None, None, None] + s[None, None, :, None] * radius[:, None, None, None]
    cz = np.array([0.0, 1.0])[None, None, None, :] * 2 * half[:, None, None, None]
    corners = np.stack(np.broadcast_arrays(cx, cy, cz), axis=-1).reshape(len(xy), 8, 3)
    uv = project(corners)
    return np.concatenate([uv.min(axis=1), uv.max(axis=1)], axis=-1)


def object_bounds_uv(scene: Scene) -> np.ndarray:
    """``[n, 4]`` conservative image-plane boxes (umin, vmin, umax, vmax) of each object."""
    half = np.asarray(list(SIZES.values()))[scene.size]
    radius = _footprint_radius(scene.shape, half)
    return _bounds_uv(scene.floor_xy.astype(np.float64), radius, half)


def sample_scene(
    rng: np.random.Generator, num_objects: int, shapes: tuple[str, ...] = ("cube",),
    sizes: tuple[str, ...] = tuple(SIZES),
) -> Scene:
    """Samples a scene of ``num_objects`` non-overlapping objects, all fully in view.

    Shapes are uniform over ``shapes``, colours over the 8 CLEVR colours, sizes over
    ``sizes`` (default small/large; the same draws as before ``sizes`` existed), rotations
    over ``[0, pi/2)`` (cubes; irrelevant for the others). Floor
    positions are rejection-sampled: two objects' bounding circles (footprint radius +
    footprint radius + ``MIN_GAP``) must not overlap, and the object's bounding box must
    project inside the image.
    """
    num_objects = int(num_objects)
    if num_objects < 1:
        raise ValueError(f"num_objects must be >= 1, got {num_objects}")
    if num_objects > MAX_OBJECTS:
        raise ValueError(f"num_objects={num_objects} is too many to place (max {MAX_OBJECTS})")
    shapes = tuple(shapes)
    if not shapes:
        raise ValueError("shapes must name at least one shape")
    for name in shapes:
        if name not in SHAPES:
            raise ValueError(f"unknown shape {name!r}; known shapes: {SHAPES}")
    shape_ids = np.array([SHAPES.index(s) for s in shapes], dtype=np.int32)
    unknown = [name for name in sizes if name not in SIZES]
    if unknown or not sizes:
        raise ValueError(f"sizes must name some of {list(SIZES)}, got {sizes}")
    size_ids = np.array([list(SIZES).index(name) for name in sizes], dtype=np.int32)
    size_values = np.asarray(list(SIZES.values()))

    for _ in range(20):  # restarts with new attributes if placement gets stuck
        shape = shape_ids[rng.integers(0, len(shape_ids), size=num_objects)].astype(np.int32)
        color = rng.integers(0, len(COLORS), size=num_objects).astype(np.int32)
        size = size_ids[rng.integers(0, len(size_ids), size=num_objects)].astype(np.int32)
        rotation = rng.uniform(0.0, np.pi / 2, size=num_objects)
        half = size_values[size]
        radius = _footprint_radius(shape, half)
        placed: list[np.ndarray] = []
        for i in range(num_objects):
            found = None
            for _ in range(8):  # batches of candidates; the first valid one is taken
                cand = rng.uniform(
                    (FLOOR_X_RANGE[0], FLOOR_Y_RANGE[0]),
                    (FLOOR_X_RANGE[1], FLOOR_Y_RANGE[1]),
                    size=(64, 2),
                )
                ok = np.ones(len(cand), dtype=bool)
                if placed:
                    prev = np.stack(placed)
                    dist = np.linalg.norm(cand[:, None, :] - prev[None], axis=-1)
                    ok &= np.all(dist >= radius[i] + radius[:i][None] + MIN_GAP, axis=1)
                box = _bounds_uv(cand, np.full(len(cand), radius[i]), np.full(len(cand), half[i]))
                ok &= np.all(box[:, :2] >= IMAGE_MARGIN, axis=1)
                ok &= np.all(box[:, 2:] <= 1 - IMAGE_MARGIN, axis=1)
                if ok.any():
                    found = cand[np.argmax(ok)]
                    break
            if found is None:
                break
            placed.append(found)
        if len(placed) == num_objects:
            xy = np.stack(placed)
            centers = project(np.concatenate([xy, half[:, None]], axis=1))
            return Scene(
                shape=shape,
                color=color,
                size=size,
                floor_xy=xy.astype(np.float32),
                rotation=rotation.astype(np.float32),
                centers=centers.astype(np.float32),
            )
    raise ValueError(f"could not place {num_objects} non-overlapping objects; use fewer")


@functools.lru_cache(maxsize=16)
def _primary_rays(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit ray directions [n*n, 3] through sample centres, the floor hits and floor t."""
    c = (np.arange(n) + 0.5) / n
    u, v = np.meshgrid(c, c, indexing="xy")  # v varies along rows
    x = (2 * u - 1) * _TAN
    y = (1 - 2 * v) * _TAN
    d = _FWD[None] + x.reshape(-1, 1) * _RIGHT[None] + y.reshape(-1, 1) * _UP[None]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    if np.any(d[:, 2] >= 0):
        raise AssertionError("camera sees above the horizon")
    t_floor = -CAMERA_POS[2] / d[:, 2]
    hits = CAMERA_POS[None] + t_floor[:, None] * d
    for a in (d, t_floor, hits):
        a.setflags(write=False)
    return d, t_floor, hits


def _safe(d: np.ndarray) -> np.ndarray:
    return np.where(np.abs(d) < 1e-12, 1e-12, d)


def _hit_boxes(o, d, xy, half, rot):
    """Nearest positive hit t [k, P] of rays o + t d with boxes rotated about z."""
    cos, sin = np.cos(rot)[:, None], np.sin(rot)[:, None]
    ox = o[..., 0] - xy[:, 0, None]
    oy = o[..., 1] - xy[:, 1, None]
    oz = o[..., 2] - half[:, None]
    # local frame: rotate by -rot
    lox, loy = cos * ox + sin * oy, -sin * ox + cos * oy
    ldx, ldy = cos * d[..., 0] + sin * d[..., 1], -sin * d[..., 0] + cos * d[..., 1]
    ldz = np.broadcast_to(d[..., 2], ldx.shape)
    h = half[:, None]
    tnear = np.full(np.broadcast_shapes(lox.shape, ldx.shape), -np.inf)
    tfar = np.full_like(tnear, np.inf)
    for oo, dd in ((lox, ldx), (loy, ldy), (oz, ldz)):
        inv = 1.0 / _safe(dd)
        t1, t2 = (-h - oo) * inv, (h - oo) * inv
        tnear = np.maximum(tnear, np.minimum(t1, t2))
        tfar = np.minimum(tfar, np.maximum(t1, t2))
    return np.where((tnear <= tfar) & (tnear > _EPS), tnear, np.inf)


def _hit_spheres(o, d, xy, half):
    ox = o[..., 0] - xy[:, 0, None]
    oy = o[..., 1] - xy[:, 1, None]
    oz = o[..., 2] - half[:, None]
    b = ox * d[..., 0] + oy * d[..., 1] + oz * d[..., 2]
    c = ox * ox + oy * oy + oz * oz - half[:, None] ** 2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _hit_cylinders(o, d, xy, half):
    ox = o[..., 0] - xy[:, 0, None]
    oy = o[..., 1] - xy[:, 1, None]
    oz = o[..., 2]
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    r2 = half[:, None] ** 2
    top = 2 * half[:, None]
    a = _safe(dx * dx + dy * dy)
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - r2
    disc = b * b - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    z_side = oz + t_side * dz
    t_side = np.where((disc >= 0) & (z_side >= 0) & (z_side <= top) & (t_side > _EPS),
                      t_side, np.inf)
    t_cap = (top - oz) / _safe(dz)
    cx, cy = ox + t_cap * dx, oy + t_cap * dy
    t_cap = np.where((cx * cx + cy * cy <= r2) & (t_cap > _EPS), t_cap, np.inf)
    return np.minimum(t_side, t_cap)


def _hit_all(o, d, shape, xy, half, rot, num_rays):
    """Hit distances [n, P] of the rays with every object (inf on a miss)."""
    t = np.full((len(shape), num_rays), np.inf)
    for sid, fn in enumerate((_hit_boxes, _hit_spheres, _hit_cylinders)):
        idx = np.flatnonzero(shape == sid)
        if idx.size == 0:
            continue
        args = (xy[idx], half[idx]) + ((rot[idx],) if sid == 0 else ())
        t[idx] = fn(o, d, *args)
    return t


def _normals(p, shape, xy, half, rot):
    """Outward unit normals at surface points p [m, 3] of the given objects (per point)."""
    lx = p[:, 0] - xy[:, 0]
    ly = p[:, 1] - xy[:, 1]
    lz = p[:, 2] - half
    # cube: the face whose normalized local coordinate is largest
    cos, sin = np.cos(rot), np.sin(rot)
    ax, ay = cos * lx + sin * ly, -sin * lx + cos * ly
    loc = np.stack([ax, ay, lz], axis=1)
    k = np.argmax(np.abs(loc), axis=1)
    s = np.sign(loc[np.arange(len(p)), k])
    nl = np.zeros_like(p)
    nl[np.arange(len(p)), k] = s
    cube = np.stack([cos * nl[:, 0] - sin * nl[:, 1], sin * nl[:, 0] + cos * nl[:, 1],
                     nl[:, 2]], axis=1)
    sphere = np.stack([lx, ly, lz], axis=1)
    rad = np.sqrt(lx * lx + ly * ly)
    on_top = lz / half > rad / half
    cyl = np.where(on_top[:, None], np.array([0.0, 0.0, 1.0]),
                   np.stack([lx, ly, np.zeros_like(lx)], axis=1))
    n = np.where((shape == 0)[:, None], cube, np.where((shape == 1)[:, None], sphere, cyl))
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def render(scene: Scene, resolution: int, supersample: int = 2, shadows: bool = True) -> np.ndarray:
    """Renders ``scene`` to a uint8 ``[resolution, resolution, 3]`` RGB image.

    ``supersample`` x ``supersample`` rays per pixel are averaged (anti-aliasing);
    ``shadows=False`` skips the shadow rays (used by tests to isolate object pixels).
    A scene with zero objects (e.g. ``scene.select([])``) renders the empty floor.
    """
    resolution = int(resolution)
    supersample = int(supersample)
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    n = resolution * supersample
    d, t_floor, floor_hits = _primary_rays(n)
    num_rays = n * n

    shape = np.asarray(scene.shape)
    xy = np.asarray(scene.floor_xy, dtype=np.float64).reshape(-1, 2)
    half = np.asarray(list(SIZES.values()))[np.asarray(scene.size)]
    rot = np.asarray(scene.rotation, dtype=np.float64)
    albedo = np.asarray(list(COLORS.values()))[np.asarray(scene.color)]

    # primary rays: nearest of floor and objects
    points = floor_hits
    normals = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (num_rays, 3))
    colors = np.broadcast_to(FLOOR_ALBEDO, (num_rays, 3))
    if len(shape):
        t_obj = _hit_all(CAMERA_POS, d, shape, xy, half, rot, num_rays)
        nearest = np.argmin(t_obj, axis=0)
        t_near = t_obj[nearest, np.arange(num_rays)]
        on_obj = np.flatnonzero(t_near < t_floor)
        if on_obj.size:
            j = nearest[on_obj]
            p = CAMERA_POS + t_near[on_obj, None] * d[on_obj]
            points, normals, colors = points.copy(), normals.copy(), colors.copy()
            points[on_obj] = p
            normals[on_obj] = _normals(p, shape[j], xy[j], half[j], rot[j])
            colors[on_obj] = albedo[j]

    lambert = np.maximum(normals @ LIGHT_DIR, 0.0)
    if shadows and len(shape):
        idx = np.flatnonzero(lambert > 0)
        origins = points[idx] + 1e-3 * normals[idx]
        t_shadow = _hit_all(origins, LIGHT_DIR, shape, xy, half, rot, idx.size)
        blocked = np.isfinite(t_shadow).any(axis=0)
        lambert = lambert.copy()
        lambert[idx[blocked]] = 0.0
    rgb = colors * (AMBIENT + DIFFUSE * lambert)[:, None]
    rgb = rgb.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
