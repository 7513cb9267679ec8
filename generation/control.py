"""Control images for ControlNet, made in the worker from a member's upload.

`make_control_image(upload, kind, size, depth=…)` turns a picture into what a ControlNet of that
kind was trained on, at the request's pixel size (the upload is cropped to the request's shape,
centred, then scaled: `PIL.ImageOps.fit`):

- "canny": Canny edges (OpenCV, thresholds 100 and 200 as in diffusers' ControlNet examples),
  white on black;
- "scribble": strokes of a scribble, made simply: Canny edges of the blurred picture (50, 150)
  thickened by a 3×3 dilation twice, white on black (ControlNet 1.1's scribble annotators are
  HED/PiDiNet networks; this is the OpenCV stand-in Pintor ships, documented in docs/models.md);
- "lineart": line art, made simply: an adaptive threshold (Gaussian, 9-pixel blocks, C = 2) of
  the grey picture, lines white on black as the lineart annotators give them;
- "depth": a depth map from a transformers depth-estimation model (DPT, Depth Anything; bright =
  near), normalised to 0–255 and grey in RGB;
- "none": the upload as it is (it already is a control image).

Pose skeletons need an OpenPose-style network, which Pintor does not ship: "pose" raises
ControlError (the front end refuses it before a job is stored).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from PIL import Image, ImageOps

from generation.prompt import CONTROL_AS_IS

CANNY_THRESHOLDS = (100, 200)  # diffusers' ControlNet docs (lllyasviel's canny annotator defaults)
SCRIBBLE_THRESHOLDS = (50, 150)
SCRIBBLE_DILATIONS = 2
LINEART_BLOCK, LINEART_C = 9, 2


class ControlError(ValueError):
    """A control image that cannot be made (a kind without a way to make it here)."""


def fit_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` (RGB) cropped to the shape of `size` (width, height), centred, and scaled to it."""
    return image if image.size == size else ImageOps.fit(image, size, Image.Resampling.LANCZOS)


def make_control_image(image: Image.Image, kind: str, size: tuple[int, int], *, depth: Any = None) -> Image.Image:
    """The control image of `kind` (generation.prompt.CONTROL_KINDS or "none") for the RGB
    picture `image`, as an RGB picture of `size` (width, height) pixels.

    `depth`: a DepthEstimator (needed for "depth"). Raises ControlError for "pose" (no pose
    estimator here), for "depth" without an estimator, and for an unknown kind."""
    import cv2

    picture = fit_to(image.convert("RGB"), size)
    if kind == CONTROL_AS_IS:
        return picture
    if kind == "depth":
        if depth is None:
            raise ControlError("no depth estimator is configured for this ControlNet")
        made: Image.Image = depth(picture)
        return made
    grey = cv2.cvtColor(np.asarray(picture), cv2.COLOR_RGB2GRAY)
    if kind == "canny":
        lines = cv2.Canny(grey, *CANNY_THRESHOLDS)
    elif kind == "scribble":
        edges = cv2.Canny(cv2.GaussianBlur(grey, (5, 5), 0), *SCRIBBLE_THRESHOLDS)
        lines = cv2.dilate(edges, np.ones((3, 3), np.uint8), iterations=SCRIBBLE_DILATIONS)
    elif kind == "lineart":
        lines = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY_INV,
                                      LINEART_BLOCK, LINEART_C)
    elif kind == "pose":
        raise ControlError("Pintor has no pose estimator: send an OpenPose skeleton with --cn none")
    else:
        raise ControlError(f"unknown control kind {kind!r}")
    return Image.fromarray(lines).convert("RGB")


class DepthEstimator:
    """A transformers depth-estimation model (AutoModelForDepthEstimation: DPT, Depth Anything,
    GLPN…) with its image processor, on `device` in float32 (its outputs are normalised, small
    models: not worth half precision). Call it with an RGB picture: returns the depth map at the
    same size, grey in RGB, bright = near (the models' relative inverse depth), 0–255."""

    def __init__(self, source: str, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        # typed in newer transformers, untyped in older ones: called through Any for both
        self.processor = cast(Any, AutoImageProcessor).from_pretrained(source)
        self.model = AutoModelForDepthEstimation.from_pretrained(source).to(device).eval()
        self.device = device

    def __call__(self, picture: Image.Image) -> Image.Image:
        import torch

        inputs = self.processor(images=picture, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            predicted = self.model(**inputs).predicted_depth  # (1, h, w)
        depth = torch.nn.functional.interpolate(predicted[:, None].float(), size=(picture.height, picture.width),
                                                mode="bicubic", align_corners=False)[0, 0]
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        grey = (scaled * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return Image.fromarray(grey).convert("RGB")


def depth_hint(control: Image.Image) -> Any:
    """A depth control image as Kandinsky 2.2's ControlNet `hint`: a float tensor of shape
    (1, 3, H, W) in 0–1 (as diffusers' KandinskyV22ControlnetPipeline example makes it)."""
    import torch

    array = np.asarray(control.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
