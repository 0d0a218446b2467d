"""Render one synthetic image: coloured shapes on a background, with their visible masks.

Shapes are painted one over the other, so a shape painted later hides part of the ones below it.
Each instance's mask is what is left visible of it; an instance left with too little visible is
not painted at all, so every painted pixel belongs to exactly one annotated instance (or the
background).
"""

import colorsys
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_CATEGORIES",
    "ShapeImageParams",
    "ShapeInstance",
    "ShapesImage",
    "render_shapes_image",
]

# The categories, in the order of their (0-based, contiguous) class index.
SHAPE_CATEGORIES: Tuple[str, ...] = ("circle", "square", "triangle", "star")

# Minimum RGB distance of a shape's colour from the background and from the other shapes.
_MIN_CONTRAST_BACKGROUND = 90.0
_MIN_CONTRAST_SHAPES = 60.0
_COLOUR_TRIES = 64
_STAR_INNER_RATIO = 0.45


def _check_range(name: str, value: Sequence[int], low: int) -> None:
    if (
        len(value) != 2
        or not all(isinstance(v, int) for v in value)
        or not low <= value[0] <= value[1]
    ):
        raise ValueError(
            f"{name}={tuple(value)!r}: must be two integers (min, max) with {low} <= min <= max"
        )


@dataclass(frozen=True)
class ShapeImageParams:
    """What one synthetic image looks like."""

    # Image size in pixels.
    height: int = 128
    width: int = 128
    # Shapes to paint per image (inclusive range); some may be dropped as too occluded.
    num_shapes: Tuple[int, int] = (2, 6)
    # Diameter of a shape's circumscribed circle in pixels (inclusive range).
    shape_size: Tuple[int, int] = (20, 56)
    # An occluded shape is dropped (not painted) when fewer pixels than this remain visible ...
    min_visible_area: int = 64
    # ... or when less than this fraction of it remains visible.
    min_visible_fraction: float = 0.5
    # Standard deviation of the Gaussian pixel noise, drawn per image in [0, max_noise_std].
    max_noise_std: float = 12.0

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16:
                raise ValueError(f"{name}={value!r}: must be an integer >= 16 (pixels)")
        _check_range("num_shapes", self.num_shapes, 1)
        _check_range("shape_size", self.shape_size, 4)
        if self.shape_size[1] > min(self.height, self.width):
            raise ValueError(
                f"shape_size={tuple(self.shape_size)!r}: the largest shape must fit in the "
                f"{self.height}x{self.width} image (max <= {min(self.height, self.width)})"
            )
        if not isinstance(self.min_visible_area, int) or self.min_visible_area < 1:
            raise ValueError(
                f"min_visible_area={self.min_visible_area!r}: must be an integer >= 1 (pixels)"
            )
        if not 0.0 < self.min_visible_fraction <= 1.0:
            raise ValueError(
                f"min_visible_fraction={self.min_visible_fraction!r}: must be in (0, 1]"
            )
        if not 0.0 <= self.max_noise_std <= 64.0:
            raise ValueError(f"max_noise_std={self.max_noise_std!r}: must be in [0, 64]")


@dataclass
class ShapeInstance:
    """One painted shape."""

    category: int  # index into SHAPE_CATEGORIES
    colour: Tuple[int, int, int]
    full_mask: np.ndarray  # (H, W) bool: the whole shape
    mask: np.ndarray  # (H, W) bool: its visible part (not hidden by shapes painted later)


@dataclass
class ShapesImage:
    """One rendered image and its instances."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    background: np.ndarray  # (H, W, 3) uint8 RGB: the same image without any shape
    instances: List[ShapeInstance]  # from the bottom one to the top one
    num_dropped: int  # shapes left out because too little of them would have been visible


def _shape_mask(
    category: int, cx: float, cy: float, radius: float, angle: float, size: Tuple[int, int]
):
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    name = SHAPE_CATEGORIES[category]
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        if name == "square":
            radii, corners = [radius], 4
        elif name == "triangle":
            radii, corners = [radius], 3
        else:  # star: 5 outer and 5 inner vertices, alternating
            radii, corners = [radius, radius * _STAR_INNER_RATIO], 10
        points = []
        for k in range(corners):
            r = radii[k % len(radii)]
            a = angle + 2.0 * math.pi * k / corners
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hue, saturation, value = rng.uniform(0.0, 1.0), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255.0


def _background(
    rng: np.random.Generator, height: int, width: int
) -> Tuple[np.ndarray, List[np.ndarray]]:
    """A plain or linear-gradient background, float (H, W, 3), and the colours it is made of."""
    base = rng.uniform(0.0, 255.0, size=3)
    if rng.uniform() < 0.5:
        return np.broadcast_to(base, (height, width, 3)).copy(), [base]
    other = np.clip(base + rng.uniform(-60.0, 60.0, size=3), 0.0, 255.0)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return base + t[..., None] * (other - base), [base, other]


def _pick_colour(rng: np.random.Generator, avoid_background, avoid_shapes) -> np.ndarray:
    """A colour far enough from the background and the other shapes (the best of a few tries)."""
    best, best_margin = None, -math.inf
    for _ in range(_COLOUR_TRIES):
        colour = _random_colour(rng)
        margin = min(
            [np.linalg.norm(colour - c) - _MIN_CONTRAST_BACKGROUND for c in avoid_background]
            + [np.linalg.norm(colour - c) - _MIN_CONTRAST_SHAPES for c in avoid_shapes]
        )
        if margin >= 0:
            return colour
        if margin > best_margin:
            best, best_margin = colour, margin
    return best


def render_shapes_image(rng: np.random.Generator, params: ShapeImageParams) -> ShapesImage:
    """Draw one image from ``rng``.

    Every instance has at least ``params.min_visible_area`` visible pixels and at least
    ``params.min_visible_fraction`` of its shape visible; the visible masks of two instances
    never overlap, and the shapes that would break these rules are not painted.
    """
    height, width = params.height, params.width
    image, background_colours = _background(rng, height, width)

    candidates = []  # bottom to top: (category, colour, full mask)
    for _ in range(int(rng.integers(params.num_shapes[0], params.num_shapes[1] + 1))):
        category = int(rng.integers(len(SHAPE_CATEGORIES)))
        radius = rng.uniform(params.shape_size[0], params.shape_size[1]) / 2.0
        cx = rng.uniform(radius, width - radius)
        cy = rng.uniform(radius, height - radius)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        colour = _pick_colour(rng, background_colours, [c for _, c, _ in candidates])
        full = _shape_mask(category, cx, cy, radius, angle, (height, width))
        candidates.append((category, colour, full))

    # From the top down: a shape's visible part is what the kept shapes above it leave.
    kept: List[ShapeInstance] = []
    covered = np.zeros((height, width), dtype=bool)
    for category, colour, full in reversed(candidates):
        visible = full & ~covered
        area = int(visible.sum())
        if area < params.min_visible_area or area < params.min_visible_fraction * int(full.sum()):
            continue
        covered |= full
        kept.append(ShapeInstance(category, tuple(int(round(c)) for c in colour), full, visible))
    kept.reverse()

    painted = image.copy()
    for instance in kept:  # bottom to top
        painted[instance.full_mask] = instance.colour
    noise_std = rng.uniform(0.0, params.max_noise_std)
    noise = rng.normal(0.0, 1.0, size=image.shape) * noise_std

    def finish(pixels: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)

    return ShapesImage(finish(painted), finish(image), kept, len(candidates) - len(kept))
