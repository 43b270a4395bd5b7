"""MuJoCo offscreen renderer for tabletop scenes: RGB image, segmentation, exact boxes.

Usage (training data, the simulated camera, tests)::

    from essen_ros.data.render import Renderer
    from essen_ros.data.scene import sample_scene, relations, orbit_camera
    renderer = Renderer(480, 320)
    scene = sample_scene(np.random.default_rng(0))
    result = renderer.render(scene)                # or render(scene, camera=Camera(...))
    result.rgb        # (H, W, 3) uint8 RGB
    result.seg        # (H, W) int16: object index, -1 for floor/background
    result.boxes      # per object [x0, y0, x1, y1] in pixels (edges), None when not in view
    result.visible    # per object: enough of it is seen to be a target/referent
    relations(scene.objects, result.camera)     # camera-relative relations for that camera

A moving camera just passes a different `Camera` per frame; the objects stay put.

The renderer builds one MuJoCo model with a slot per possible object (a box, a sphere and a
cylinder geom each) and reconfigures sizes, poses, materials, lights and camera in place for
every scene: compiling a model per image would cost more than rendering it.

Back-end: MuJoCo's OpenGL context is chosen by the `MUJOCO_GL` environment variable, set to
`egl` here unless the user set it (Mesa's software EGL renders without a GPU).
`MUJOCO_GL=osmesa` works after `apt-get install libosmesa6`.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

# MuJoCo picks its OpenGL back-end when it is first imported; too late to choose after that.
_MUJOCO_IMPORTED_FIRST = "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ
os.environ.setdefault("MUJOCO_GL", "egl")



class RendererUnavailable(RuntimeError):
    """No OpenGL back-end for MuJoCo; the message says what to set or install."""


_BACKEND_HINT = ("Set MUJOCO_GL=egl (needs Mesa's libegl1 and libgl1-mesa-dri) or MUJOCO_GL=osmesa "
                 "(apt-get install libosmesa6) before starting Python.")

try:
    import mujoco  # noqa: E402  (MUJOCO_GL must be set before the import)
except Exception as _error:  # mujoco fails at import when the chosen GL library is missing
    raise RendererUnavailable(f"MuJoCo could not load its OpenGL back-end MUJOCO_GL="
                              f"{os.environ.get('MUJOCO_GL')!r} ({_error!r}). {_BACKEND_HINT}") from _error
import numpy as np  # noqa: E402

from essen_ros.data.scene import (MAX_OBJECTS, Camera, Lighting, Scene,  # noqa: E402,F401
                                  _convex_hull_area, silhouette_area, surface_points)
from essen_ros.data.vocab import SHAPES, SIZE_RADIUS  # noqa: E402

MIN_VISIBLE_FRACTION = 0.3   # below this share of its unoccluded silhouette, an object is "hidden"
MIN_VISIBLE_PIXELS = 30

# Metal: a darker, saturated body (emission keeps the hue) and strong highlights, which is
# how CLEVR's mirror-like metal reads at this size; rubber: plain matte colour.
METAL_DIFFUSE = 0.5
METAL_SHININESS = 0.5
METAL_EMISSION = 0.25
HEADLIGHT_SPECULAR = 0.35   # highlights seen from the camera, as CLEVR's metal shows

_HIDDEN_GROUP = 3            # geom group switched off in the render options: unused slots
_SHAPE_GEOM = {"cube": "box", "sphere": "sphere", "cylinder": "cylinder"}


@dataclass
class RenderResult:
    rgb: np.ndarray            # (H, W, 3) uint8 RGB
    seg: np.ndarray            # (H, W) int16 object index, -1 background
    boxes: list                # per object [x0, y0, x1, y1] or None (no pixel in view)
    centers: list              # per object [u, v]: projection of its 3D centre
    pixels: list               # per object: number of visible pixels
    visible_fraction: list     # per object: visible pixels / unoccluded silhouette area
    visible: list              # per object: usable as a target / referent
    camera: Camera


def default_shadow_size(width: int, height: int) -> int:
    """Shadow map resolution: the map is drawn every frame, so keep it near the image size
    (a 768 map at 320x240 costs 2 ms more per image than 512 and looks the same)."""
    longest = max(width, height)
    return 512 if longest <= 400 else 768 if longest <= 640 else 1024


def _model_xml(width: int, height: int, shadow_size: int) -> str:
    slots = []
    for slot in range(MAX_OBJECTS):
        for shape in SHAPES:
            slots.append(f'<geom name="o{slot}_{shape}" type="{_SHAPE_GEOM[shape]}" '
                         f'size="0.5 0.5 0.5" pos="0 0 -50" group="{_HIDDEN_GROUP}" '
                         f'material="m{slot}_{shape}" contype="0" conaffinity="0"/>')
    materials = "".join(f'<material name="m{slot}_{shape}" rgba="0.5 0.5 0.5 1"/>'
                        for slot in range(MAX_OBJECTS) for shape in SHAPES)
    return f"""<mujoco>
  <statistic extent="7" center="0 0 0.5"/>
  <visual>
    <global offwidth="{width}" offheight="{height}"/>
    <quality shadowsize="{shadow_size}" offsamples="0"/>
    <map znear="0.02" zfar="80" shadowclip="2.5"/>
    <headlight ambient="0.25 0.25 0.25" diffuse="0 0 0" specular="{HEADLIGHT_SPECULAR} {HEADLIGHT_SPECULAR} {HEADLIGHT_SPECULAR}"/>
  </visual>
  <asset>
    <material name="floor" rgba="0.55 0.55 0.55 1" specular="0.05" shininess="0.05"/>
    {materials}
  </asset>
  <worldbody>
    <light name="key" directional="true" castshadow="true" pos="0 0 10" dir="0 0 -1"
           diffuse="0.4 0.4 0.4" specular="0.5 0.5 0.5"/>
    <light name="glow" type="spot" castshadow="false" pos="0 0 10" dir="0 0 -1" cutoff="85"
           exponent="4" diffuse="0.3 0.3 0.3" specular="0 0 0"/>
    <light name="fill" directional="true" castshadow="false" pos="0 0 10" dir="0 0 -1"
           diffuse="0.25 0.25 0.25" specular="0.05 0.05 0.05"/>
    <geom name="floor" type="plane" size="400 400 0.1" material="floor"/>
    {''.join(slots)}
    <camera name="view" pos="10 0 5" xyaxes="0 1 0 -0.4 0 1" fovy="34"/>
  </worldbody>
</mujoco>"""


class Renderer:
    """Offscreen renderer of `Scene`s at a fixed image size (create one per size).

    `shadows=False` renders about twice as fast on a CPU (no shadow map pass)."""

    def __init__(self, width: int = 480, height: int = 320, shadows: bool = True,
                 shadow_size: int | None = None):
        if int(width) < 16 or int(height) < 16:
            raise ValueError(f"image size {width}x{height} too small (>= 16 px each side)")
        self.width, self.height = int(width), int(height)
        self.shadows = bool(shadows)
        shadow_size = shadow_size or default_shadow_size(self.width, self.height)
        self.model = mujoco.MjModel.from_xml_string(
            _model_xml(self.width, self.height, shadow_size))
        self.data = mujoco.MjData(self.model)
        try:
            self._gl = mujoco.GLContext(self.width, self.height)
            self._gl.make_current()
            self._context = mujoco.MjrContext(self.model, mujoco.mjtFontScale.mjFONTSCALE_100)
        except Exception as error:  # no GL back-end: tell the user what to set
            if _MUJOCO_IMPORTED_FIRST:
                raise RendererUnavailable(
                    "mujoco was imported before essen_ros.data.render without MUJOCO_GL set, so "
                    "it chose a windowed back-end. Export MUJOCO_GL=egl (or osmesa) before "
                    f"starting Python, or import essen_ros.data.render first ({error}).") from error
            raise RendererUnavailable(
                f"MuJoCo could not open an offscreen OpenGL context with MUJOCO_GL="
                f"{os.environ.get('MUJOCO_GL')!r} ({error}). {_BACKEND_HINT}") from error
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._scene = mujoco.MjvScene(self.model, maxgeom=64)
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._view = mujoco.MjvCamera()
        self._view.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._perturb = mujoco.MjvPerturb()
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._ids = np.empty((self.height, self.width, 3), np.uint8)
        self._option = mujoco.MjvOption()
        self._option.geomgroup[_HIDDEN_GROUP] = 0
        m = self.model
        self._geom = {(slot, shape): mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM,
                                                       f"o{slot}_{shape}")
                      for slot in range(MAX_OBJECTS) for shape in SHAPES}
        self._floor_material = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, "floor")
        self._camera_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, "view")
        self._key = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_LIGHT, "key")
        self._fill = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_LIGHT, "fill")
        self._glow = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_LIGHT, "glow")
        self._view.fixedcamid = self._camera_id
        # Shadows are most of the rendering time on a software renderer (about 2/3).
        m.light_castshadow[self._key] = self.shadows

    def close(self):
        # Free the GL objects with this renderer's own context current: freed under another
        # renderer's context, they would delete that renderer's buffers (same GL ids).
        gl = getattr(self, "_gl", None)
        if gl is not None:
            gl.make_current()
            self._context.free()
            gl.free()
            self._gl = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: GL may already be gone
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- configuring the model in place --------------------------------------------------
    def _apply(self, scene: Scene, camera: Camera) -> np.ndarray:
        m = self.model
        if len(scene.objects) > MAX_OBJECTS:
            raise ValueError(f"{len(scene.objects)} objects: the renderer holds {MAX_OBJECTS}")
        geom_to_object = np.full(m.ngeom, -1, np.int16)
        for geom in self._geom.values():
            m.geom_group[geom] = _HIDDEN_GROUP
            m.geom_pos[geom] = (0.0, 0.0, -50.0)
        for index, obj in enumerate(scene.objects):
            geom = self._geom[(index, obj.shape)]
            geom_to_object[geom] = index
            r = SIZE_RADIUS[obj.size]
            if obj.shape == "cube":
                half = r / math.sqrt(2.0)
                size = (half, half, half)
                rbound = half * math.sqrt(3.0)
            elif obj.shape == "sphere":
                size, rbound = (r, 0.0, 0.0), r
            else:
                size, rbound = (r, r, 0.0), r * math.sqrt(2.0)
            m.geom_size[geom] = size
            m.geom_rbound[geom] = rbound
            m.geom_aabb[geom] = (0.0, 0.0, 0.0, rbound, rbound, rbound)
            m.geom_group[geom] = 0
            m.geom_pos[geom] = obj.position
            half_angle = math.radians(obj.rotation) / 2.0
            m.geom_quat[geom] = (math.cos(half_angle), 0.0, 0.0, math.sin(half_angle))
            rgb = obj.rgb if obj.rgb is not None else _clevr_rgb(obj.color)
            material = m.geom_matid[geom]
            if obj.material == "metal":
                # Shiny: darker body, strong tight highlight (CLEVR's metal is a mirror-ish BSDF).
                m.mat_rgba[material] = (*(METAL_DIFFUSE * np.asarray(rgb)), 1.0)
                m.mat_specular[material] = 1.0
                m.mat_shininess[material] = METAL_SHININESS
                m.mat_emission[material] = METAL_EMISSION
            else:
                m.mat_rgba[material] = (*rgb, 1.0)
                m.mat_specular[material] = 0.08
                m.mat_shininess[material] = 0.1
                m.mat_emission[material] = 0.0
            m.geom_rgba[geom] = m.mat_rgba[material]
        self._apply_lighting(scene.lighting, camera)
        self._apply_camera(camera)
        mujoco.mj_kinematics(m, self.data)
        mujoco.mj_camlight(m, self.data)
        # Geoms of the world body are static to MuJoCo: their world orientation is not
        # recomputed from geom_quat, so set the pose the renderer reads directly.
        for index, obj in enumerate(scene.objects):
            geom = self._geom[(index, obj.shape)]
            a = math.radians(obj.rotation)
            self.data.geom_xpos[geom] = obj.position
            self.data.geom_xmat[geom] = (math.cos(a), -math.sin(a), 0.0,
                                         math.sin(a), math.cos(a), 0.0, 0.0, 0.0, 1.0)
        return geom_to_object

    def _apply_lighting(self, light: Lighting, camera: Camera):
        m = self.model
        gray = light.floor_gray
        m.mat_rgba[self._floor_material] = (gray, gray, gray, 1.0)
        m.vis.headlight.ambient[:] = light.ambient
        # The key light comes from the camera's side, turned by key_azimuth, like CLEVR's.
        _, _, forward = camera.axes()
        view_azimuth = math.atan2(forward[1], forward[0])
        az = view_azimuth + math.pi + math.radians(light.key_azimuth)
        el = math.radians(light.key_elevation)
        to_light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
                             math.sin(el)])
        # The key light casts the shadows. A directional light's shadow map spans just the
        # table (a spot light's spans its cone and speckles at the cone's edge). A shadowless
        # spot from the same side darkens the floor away from the light, as in CLEVR.
        m.light_dir[self._key] = -to_light
        m.light_pos[self._key] = 14.0 * to_light
        m.light_diffuse[self._key] = 0.6 * light.key_intensity
        m.light_dir[self._glow] = -to_light
        m.light_pos[self._glow] = 14.0 * to_light
        m.light_diffuse[self._glow] = 0.6 * light.key_intensity
        az_fill = view_azimuth + math.pi - math.radians(light.key_azimuth) + 0.5
        to_fill = np.array([math.cos(az_fill) * 0.7, math.sin(az_fill) * 0.7, 0.7])
        m.light_dir[self._fill] = -to_fill
        m.light_pos[self._fill] = 10.0 * to_fill
        m.light_diffuse[self._fill] = light.fill_intensity

    def _apply_camera(self, camera: Camera):
        m = self.model
        right, up, forward = camera.axes()
        rotation = np.stack([right, up, -forward], axis=1)  # columns: camera x, y, z in world
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, rotation.flatten())
        m.cam_pos[self._camera_id] = camera.position
        m.cam_quat[self._camera_id] = quat
        m.cam_fovy[self._camera_id] = camera.fovy

    # -- rendering -----------------------------------------------------------------------
    def render(self, scene: Scene, camera: Camera | None = None) -> RenderResult:
        camera = camera or scene.camera
        geom_to_object = self._apply(scene, camera)
        if self._gl is None:
            raise RuntimeError("render() after close()")
        self._gl.make_current()
        mjscene, flags = self._scene, self._scene.flags
        mujoco.mjv_updateScene(self.model, self.data, self._option, self._perturb, self._view,
                               mujoco.mjtCatBit.mjCAT_ALL, mjscene)
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
        mujoco.mjr_render(self._rect, mjscene, self._context)
        mujoco.mjr_readPixels(self._rgb, None, self._rect, self._context)
        # Second pass: every geom drawn flat in the colour of its scene index + 1 (0 = none).
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        mujoco.mjr_render(self._rect, mjscene, self._context)
        mujoco.mjr_readPixels(self._ids, None, self._rect, self._context)
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
        segid_to_object = np.full(256, -1, np.int16)
        for k in range(min(mjscene.ngeom, 255)):
            g = mjscene.geoms[k]
            if g.objtype == mujoco.mjtObj.mjOBJ_GEOM and g.objid >= 0:
                segid_to_object[g.segid + 1] = geom_to_object[g.objid]
        # OpenGL rows run bottom-up; images top-down.
        rgb = self._rgb[::-1].copy()
        seg = segid_to_object[self._ids[::-1, :, 0]]
        return self._annotate(scene, camera, rgb, seg)

    def _annotate(self, scene, camera, rgb, seg) -> RenderResult:
        n = len(scene.objects)
        counts = np.bincount(seg.ravel() + 1, minlength=n + 1)[1:]
        boxes, pixels, fractions, visible, centers = [], [], [], [], []
        # One projection for all outlines and centres (the camera maths is the slow part).
        outlines = [surface_points(obj) for obj in scene.objects]
        projected = camera.project(np.concatenate(outlines + [np.array([o.position for o in scene.objects], float)]),
                                   self.width, self.height)
        starts = np.cumsum([0] + [len(o) for o in outlines])
        for index, obj in enumerate(scene.objects):
            count = int(counts[index])
            if count:
                mask = seg == index
                rows = np.flatnonzero(mask.any(axis=1))
                cols = np.flatnonzero(mask.any(axis=0))
                boxes.append([int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1])
            else:
                boxes.append(None)
            full_area = _convex_hull_area(projected[starts[index]:starts[index + 1]])
            fraction = count / full_area if full_area > 0 else 0.0
            pixels.append(count)
            fractions.append(round(float(fraction), 3))
            visible.append(bool(count >= MIN_VISIBLE_PIXELS and fraction >= MIN_VISIBLE_FRACTION))
            u, v = projected[starts[-1] + index]
            centers.append([round(float(u), 1), round(float(v), 1)])
        return RenderResult(rgb, seg, boxes, centers, pixels, fractions, visible, camera)


def _clevr_rgb(color: str):
    from essen_ros.data.vocab import CLEVR_RGB
    return tuple(c / 255.0 for c in CLEVR_RGB[color])


def check_backend():
    """Raise RendererUnavailable now (with what to set) rather than in a worker later."""
    Renderer(16, 16, shadows=False).close()
