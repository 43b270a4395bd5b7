"""Scene graphs of the tabletop world: objects, camera, lighting, CLEVR relations.

A `Scene` is everything needed to render one image and to talk about it: the objects'
attributes and 3D poses, the camera and the lights. `sample_scene(rng)` draws a random
CLEVR-like scene; `relations(objects, camera)` gives the camera-relative spatial relations
exactly as CLEVR defines them:

* the camera's ground-plane axes are its right vector and its viewing direction, both
  projected onto the floor (z = 0) and normalised; "left" is minus right, "front" is minus
  behind (towards the camera);
* object A is `<relation>` of object B when (A - B) . axis > eps (CLEVR uses eps = 0.2).

`relations(...)[name][b]` lists the indices a that are `name` of b (CLEVR's layout).

Units are CLEVR's: objects live in [-3, 3] x [-3, 3] on the floor, small objects have radius
0.35 and large ones 0.7.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from essen_ros.data.vocab import (CLEVR_RGB, COLORS, MATERIALS, SHAPES, SIZE_RADIUS, SIZES,
                                  check_value)

MAX_OBJECTS = 10          # counting answers stop at 10
TABLE_HALF_EXTENT = 3.0   # CLEVR samples object centres in [-3, 3]^2
MIN_GAP = 0.25            # CLEVR's minimum free space between two objects' footprints
RELATION_EPS = 0.2        # CLEVR's threshold for left/right/front/behind
RELATIONS = ("left", "right", "front", "behind")

# CLEVR's reference camera (Blender scene): about 11.3 units from the table centre,
# 26 degrees above the floor, 525 px focal length at 480 px width.
CLEVR_CAMERA_DISTANCE = 11.26
CLEVR_CAMERA_ELEVATION = 26.4
CLEVR_FOCAL_AT_480 = 525.0


@dataclass
class SceneObject:
    shape: str
    color: str
    material: str
    size: str
    position: tuple            # (x, y, z) of the object's centre, scene units
    rotation: float = 0.0      # degrees about the vertical axis
    rgb: tuple | None = None   # rendered colour 0..1 (CLEVR colour with a little jitter)

    @property
    def radius(self) -> float:
        return SIZE_RADIUS[self.size]

    @property
    def footprint_radius(self) -> float:
        """Radius of the disc the object covers on the floor (a rotated cube reaches r)."""
        return self.radius

    def attributes(self) -> dict:
        return {"shape": self.shape, "color": self.color, "material": self.material,
                "size": self.size}


@dataclass
class Camera:
    position: tuple            # (x, y, z)
    lookat: tuple              # (x, y, z) point the optical axis passes through
    fovy: float                # vertical field of view, degrees

    def axes(self):
        """(right, up, forward) unit vectors in world coordinates."""
        forward = np.subtract(self.lookat, self.position).astype(float)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, (0.0, 0.0, 1.0))
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        return right, up, forward

    def ground_directions(self) -> dict:
        """CLEVR's camera-relative unit directions on the floor plane."""
        right, _, forward = self.axes()
        right = np.array([right[0], right[1], 0.0])
        behind = np.array([forward[0], forward[1], 0.0])
        right /= np.linalg.norm(right)
        behind /= np.linalg.norm(behind)
        return {"left": -right, "right": right, "front": -behind, "behind": behind}

    def focal_px(self, height: int) -> float:
        return (height / 2.0) / math.tan(math.radians(self.fovy) / 2.0)

    def project(self, points, width: int, height: int) -> np.ndarray:
        """World points (N, 3) -> pixel coordinates (N, 2), (0, 0) = top-left image corner."""
        right, up, forward = self.axes()
        rel = np.atleast_2d(np.asarray(points, float)) - np.asarray(self.position, float)
        depth = rel @ forward
        f = self.focal_px(height)
        u = width / 2.0 + f * (rel @ right) / depth
        v = height / 2.0 - f * (rel @ up) / depth
        return np.stack([u, v], axis=1)


@dataclass
class Lighting:
    key_azimuth: float = -40.0     # degrees relative to the camera's viewing direction
    key_elevation: float = 50.0    # degrees above the floor
    key_intensity: float = 0.6
    fill_intensity: float = 0.22
    ambient: float = 0.33
    floor_gray: float = 0.52


@dataclass
class Scene:
    objects: list
    camera: Camera
    lighting: Lighting = field(default_factory=Lighting)
    scene_id: str = ""

    def to_dict(self) -> dict:
        return {"scene": self.scene_id, "objects": [asdict(o) for o in self.objects],
                "camera": asdict(self.camera), "lighting": asdict(self.lighting)}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        # Render annotations (box, visible, ...) may sit beside the attributes; keep to fields.
        names = set(SceneObject.__dataclass_fields__)
        objects = [SceneObject(**{**{k: v for k, v in o.items() if k in names},
                                  "position": tuple(o["position"]),
                                  "rgb": tuple(o["rgb"]) if o.get("rgb") else None})
                   for o in d["objects"]]
        cam = d["camera"]
        camera = Camera(tuple(cam["position"]), tuple(cam["lookat"]), float(cam["fovy"]))
        return cls(objects, camera, Lighting(**d.get("lighting", {})), d.get("scene", ""))


def relations(objects, camera: Camera, eps: float = RELATION_EPS) -> dict:
    """CLEVR relations: result[name][b] = indices a with a `name` of b."""
    directions = camera.ground_directions()
    xy = np.array([[o.position[0], o.position[1], 0.0] for o in objects], float).reshape(-1, 3)
    result = {}
    for name in RELATIONS:
        proj = xy @ directions[name]
        result[name] = [[a for a in range(len(objects)) if a != b and proj[a] - proj[b] > eps]
                        for b in range(len(objects))]
    return result


def clevr_camera(image_width: int = 480, image_height: int = 320) -> Camera:
    """CLEVR's un-jittered camera, for an image of the given size."""
    return orbit_camera(azimuth=-43.3, elevation=CLEVR_CAMERA_ELEVATION,
                        distance=CLEVR_CAMERA_DISTANCE, lookat=(0.0, 0.0, 0.0),
                        fovy=clevr_fovy(image_width, image_height))


def clevr_fovy(width: int, height: int, zoom: float = 1.0) -> float:
    """Vertical fov giving CLEVR's framing: focal length 525 px per 480 px of width."""
    focal = CLEVR_FOCAL_AT_480 * width / 480.0 * zoom
    return math.degrees(2.0 * math.atan((height / 2.0) / focal))


def orbit_camera(azimuth: float, elevation: float, distance: float, lookat=(0.0, 0.0, 0.0),
                 fovy: float = 33.9) -> Camera:
    """Camera on a sphere around `lookat`; azimuth/elevation in degrees."""
    az, el = math.radians(azimuth), math.radians(elevation)
    offset = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    position = np.asarray(lookat, float) + distance * offset
    return Camera(tuple(float(x) for x in position), tuple(float(x) for x in lookat), float(fovy))


def object_height_center(shape: str, size: str) -> float:
    """z of the centre of an object resting on the floor."""
    r = SIZE_RADIUS[size]
    return r / math.sqrt(2.0) if shape == "cube" else r


def validate_request(n_objects=None, shapes=SHAPES, colors=COLORS, materials=MATERIALS,
                     sizes=SIZES, min_objects=3, max_objects=MAX_OBJECTS):
    """Reject impossible scene requests with a clear ValueError before anything renders."""
    for attr, values in (("shape", shapes), ("color", colors), ("material", materials),
                         ("size", sizes)):
        if not values:
            raise ValueError(f"no {attr} allowed: give at least one {attr}")
        for v in values:
            check_value(attr, v)
    counts = [n_objects] if n_objects is not None else [min_objects, max_objects]
    for n in counts:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"number of objects must be a positive integer, got {n!r}")
        if n > MAX_OBJECTS:
            raise ValueError(f"{n} objects do not fit the table: at most {MAX_OBJECTS} "
                             f"(counting answers stop at 10)")
    if n_objects is None and min_objects > max_objects:
        raise ValueError(f"min_objects {min_objects} > max_objects {max_objects}")


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, *,
                 shapes=SHAPES, colors=COLORS, materials=MATERIALS, sizes=SIZES,
                 min_objects: int = 3, max_objects: int = MAX_OBJECTS, jitter: bool = True,
                 image_size=(480, 320), scene_id: str = "") -> Scene:
    """Draw a random CLEVR-like scene: objects without overlap, a jittered camera and light.

    `jitter=False` keeps CLEVR's camera and lights exactly (useful for tests)."""
    validate_request(n_objects, shapes, colors, materials, sizes, min_objects, max_objects)
    if n_objects is None:
        n_objects = int(rng.integers(min_objects, max_objects + 1))
    objects = _place_objects(rng, n_objects, shapes, colors, materials, sizes, jitter)
    width, height = image_size
    if jitter:
        fovy = clevr_fovy(width, height, zoom=float(rng.uniform(0.9, 1.1)))
        # Keep the horizon out of the picture (CLEVR's floor fills the view): the top edge
        # of the view must still look down by some degrees.
        elevation = max(float(rng.uniform(24.0, 42.0)), fovy / 2.0 + 8.0)
        camera = orbit_camera(
            azimuth=float(rng.uniform(-180.0, 180.0)),
            elevation=elevation,
            distance=float(rng.uniform(10.0, 12.5)),
            lookat=(float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.6, 0.6)), 0.0),
            fovy=fovy)
        lighting = Lighting(key_azimuth=float(rng.uniform(-80.0, 0.0)),
                            key_elevation=float(rng.uniform(35.0, 70.0)),
                            key_intensity=float(rng.uniform(0.5, 0.75)),
                            fill_intensity=float(rng.uniform(0.15, 0.3)),
                            ambient=float(rng.uniform(0.28, 0.38)),
                            floor_gray=float(rng.uniform(0.48, 0.62)))
    else:
        camera = clevr_camera(width, height)
        lighting = Lighting()
    return Scene(objects, camera, lighting, scene_id)


def _place_objects(rng, n, shapes, colors, materials, sizes, jitter,
                   restarts=50, tries_per_object=300):
    # An unlucky early layout can block the rest; start over then (CLEVR does the same).
    for _ in range(restarts):
        objects = []
        while len(objects) < n:
            placed = _place_one(rng, objects, shapes, colors, materials, sizes, jitter,
                                tries_per_object)
            if placed is None:
                break
            objects.append(placed)
        else:
            return objects
    raise ValueError(f"could not place {n} objects on the table without overlap")


def _place_one(rng, objects, shapes, colors, materials, sizes, jitter, tries):
    for _ in range(tries):
        shape = str(rng.choice(shapes))
        size = str(rng.choice(sizes))
        r = SIZE_RADIUS[size]
        x, y = rng.uniform(-TABLE_HALF_EXTENT, TABLE_HALF_EXTENT, size=2)
        if any(math.hypot(x - o.position[0], y - o.position[1]) < r + o.radius + MIN_GAP
               for o in objects):
            continue
        color = str(rng.choice(colors))
        base = np.array(CLEVR_RGB[color], float) / 255.0
        rgb = np.clip(base + (rng.uniform(-0.04, 0.04, 3) if jitter else 0.0), 0.0, 1.0)
        return SceneObject(
            shape=shape, color=color, material=str(rng.choice(materials)), size=size,
            position=(float(x), float(y), object_height_center(shape, size)),
            rotation=float(rng.uniform(0.0, 360.0)), rgb=tuple(float(c) for c in rgb))
    return None


# -- object outlines (all shapes are convex: the hull of the projected outline is the
#    silhouette) ------------------------------------------------------------------------------
def _unit_sphere_points(count: int = 64) -> np.ndarray:
    i = np.arange(count) + 0.5
    phi = np.arccos(1 - 2 * i / count)
    theta = math.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


_SPHERE = _unit_sphere_points()
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * math.pi, 32, endpoint=False)),
                    np.sin(np.linspace(0, 2 * math.pi, 32, endpoint=False))], 1)
_CYLINDER = np.concatenate([np.c_[_CIRCLE, np.full(32, z)] for z in (-1.0, 1.0)])
_CUBE = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)


def surface_points(obj) -> np.ndarray:
    """Points on the object's outline in world coordinates; all shapes are convex, so the
    convex hull of their projection is the unoccluded silhouette."""
    r = SIZE_RADIUS[obj.size]
    if obj.shape == "sphere":
        local = _SPHERE * r
    elif obj.shape == "cylinder":
        local = _CYLINDER * r
    else:
        local = _CUBE * (r / math.sqrt(2.0))
    a = math.radians(obj.rotation)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return local @ rot.T + np.asarray(obj.position, float)


def silhouette_area(obj, camera: Camera, width: int, height: int) -> float:
    """Pixel area the object would cover with nothing in front of it (inside or outside the
    frame: an object cut by the image border counts as partly hidden)."""
    return _convex_hull_area(camera.project(surface_points(obj), width, height))


def _convex_hull_area(points: np.ndarray) -> float:
    pts = sorted(map(tuple, np.round(points, 4)))
    if len(pts) < 3:
        return 0.0

    def half(seq):
        hull = []
        for p in seq:
            while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                      - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
                hull.pop()
            hull.append(p)
        return hull

    hull = np.array(half(pts)[:-1] + half(pts[::-1])[:-1])
    x, y = hull[:, 0], hull[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
