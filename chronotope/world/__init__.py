"""The World: a procedural 2-D physics world that renders captioned videos with ground truth.

    scene = sample_scene(seed=0)                      # or scene_from_spec(parse_prompt(text), seed=0)
    out = render(scene, height=64, width=112, num_frames=17, fps=8)
    out.frames  # uint8 [T, H, W, 3];  out.tracks: per object 'x', 'y', 'size', 'visible' [T]
    detailed_caption(scene, 0), short_caption(scene), scene.spec
    with_camera(scene, Camera("pan-left", "slow"), "grid")   # opt-in camera (camera.py); out.camera: its track
"""

from .camera import CAMERA_CLASSES, Camera, parse_camera
from .captions import detailed_caption, short_caption
from .parser import parse_prompt
from .render import Render, check_frame_size, render
from .scene import Scene, SceneObject, sample_scene, scene_from_spec, with_camera
from .vocab import is_heldout, validate_spec

__all__ = ["CAMERA_CLASSES", "Camera", "Render", "Scene", "SceneObject", "check_frame_size", "detailed_caption",
           "is_heldout", "parse_camera", "parse_prompt", "render", "sample_scene", "scene_from_spec", "short_caption",
           "validate_spec", "with_camera"]
