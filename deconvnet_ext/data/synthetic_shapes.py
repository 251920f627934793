"""Drawings of the 20 synthetic object classes (VOC's class names, cartoon shapes).

Each class is drawn into its own patch (RGB + mask) in unit-box coordinates. The
classes are built so that neither colour nor shape nor context alone separates them:
  - same colour, different shape: bottle / pottedplant (green), chair / diningtable /
    horse (brown), bus / train (yellow), car / boat (red or blue hull);
  - same shape, different context: cat (indoors) / dog (on grass);
    bird (sky or water) vs aeroplane (sky);
  - same shape, different texture: cow (spotted) / sheep (dotted wool);
  - thin structures: bicycle (rings and a wire frame), chair and table legs, person
    limbs, boat mast.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

# Scenes: outdoor scenes have sky above the horizon and one ground type below it.
SCENES = ("grass", "road", "water", "indoor")


class Patch:
    """An object's drawing surface: rgb uint8 (h, w, 3) and mask uint8 (h, w).
    Coordinates are fractions of the patch (x of its width, y of its height);
    thicknesses and radii are fractions of the patch height."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.mask = np.zeros((height, width), np.uint8)

    def _pt(self, x: float, y: float) -> tuple[int, int]:
        return int(round(x * (self.w - 1))), int(round(y * (self.h - 1)))

    def _px(self, r: float) -> int:
        return max(1, int(round(r * self.h)))

    def _both(self, draw: Callable[[np.ndarray, tuple], None], colour) -> None:
        draw(self.rgb, tuple(int(c) for c in colour))
        draw(self.mask, 1)

    def poly(self, points, colour) -> None:
        pts = np.array([self._pt(x, y) for x, y in points], np.int32)
        self._both(lambda img, c: cv2.fillPoly(img, [pts], c), colour)

    def rect(self, x0, y0, x1, y1, colour) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)

    def ellipse(self, cx, cy, rx, ry, colour) -> None:
        """rx is a fraction of the width, ry of the height."""
        axes = (max(1, int(round(rx * self.w))), max(1, int(round(ry * self.h))))
        centre = self._pt(cx, cy)
        self._both(lambda img, c: cv2.ellipse(img, centre, axes, 0, 0, 360, c, -1), colour)

    def disc(self, cx, cy, r, colour) -> None:
        centre, radius = self._pt(cx, cy), self._px(r)
        self._both(lambda img, c: cv2.circle(img, centre, radius, c, -1), colour)

    def ring(self, cx, cy, r, thickness, colour) -> None:
        centre, radius, t = self._pt(cx, cy), self._px(r), self._px(thickness)
        self._both(lambda img, c: cv2.circle(img, centre, radius, c, t), colour)

    def line(self, points, thickness, colour) -> None:
        pts = np.array([self._pt(x, y) for x, y in points], np.int32)
        t = self._px(thickness)
        self._both(lambda img, c: cv2.polylines(img, [pts], False, c, t), colour)


def jitter(rng: np.random.Generator, colour, amount: int = 20) -> tuple[int, int, int]:
    c = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return tuple(int(v) for v in c)


RED, BLUE, WHITE = (185, 40, 40), (45, 70, 170), (230, 230, 225)
YELLOW, GREEN, BROWN = (225, 185, 40), (40, 125, 55), (125, 80, 45)
ORANGE, GREY, DARK = (215, 130, 55), (140, 140, 145), (40, 40, 45)


def _aeroplane(p: Patch, rng) -> None:
    body = jitter(rng, (205, 205, 210))
    p.ellipse(0.5, 0.55, 0.48, 0.13, body)
    p.poly([(0.38, 0.55), (0.62, 0.55), (0.45, 0.0)], body)      # far wing
    p.poly([(0.38, 0.55), (0.62, 0.55), (0.5, 1.0)], jitter(rng, (170, 170, 180)))
    p.poly([(0.02, 0.55), (0.14, 0.55), (0.04, 0.12)], body)     # tail fin


def _bird(p: Patch, rng) -> None:
    c = jitter(rng, (85, 60, 40))
    p.ellipse(0.5, 0.6, 0.22, 0.2, c)
    p.line([(0.0, 0.15), (0.45, 0.55), (0.55, 0.55), (1.0, 0.15)], 0.14, c)


def _bicycle(p: Patch, rng) -> None:
    c = jitter(rng, [DARK, RED, BLUE][rng.integers(3)])
    t = 0.06
    p.ring(0.2, 0.7, 0.28, t, c)
    p.ring(0.8, 0.7, 0.28, t, c)
    p.line([(0.2, 0.7), (0.45, 0.32), (0.8, 0.7)], t, c)
    p.line([(0.45, 0.32), (0.72, 0.32), (0.8, 0.7)], t, c)
    p.line([(0.72, 0.32), (0.74, 0.05)], t, c)
    p.line([(0.45, 0.32), (0.42, 0.12)], t, c)


def _motorbike(p: Patch, rng) -> None:
    c = jitter(rng, [DARK, RED][rng.integers(2)])
    p.disc(0.2, 0.72, 0.27, jitter(rng, DARK, 10))
    p.disc(0.8, 0.72, 0.27, jitter(rng, DARK, 10))
    p.ellipse(0.5, 0.5, 0.3, 0.18, c)
    p.line([(0.75, 0.45), (0.8, 0.05)], 0.08, c)


def _hull(p: Patch, c) -> None:
    p.poly([(0.0, 0.5), (1.0, 0.5), (0.85, 0.95), (0.15, 0.95)], c)


def _boat(p: Patch, rng) -> None:
    _hull(p, jitter(rng, [RED, BLUE][rng.integers(2)]))
    p.line([(0.5, 0.5), (0.5, 0.0)], 0.05, jitter(rng, BROWN))
    p.poly([(0.54, 0.04), (0.54, 0.46), (0.88, 0.46)], jitter(rng, WHITE, 10))


def _car(p: Patch, rng) -> None:
    c = jitter(rng, [RED, BLUE][rng.integers(2)])
    p.poly([(0.22, 0.4), (0.32, 0.05), (0.7, 0.05), (0.8, 0.4)], c)          # cabin
    p.rect(0.27, 0.12, 0.48, 0.38, jitter(rng, (120, 160, 190)))            # window
    p.rect(0.0, 0.38, 1.0, 0.8, c)
    p.disc(0.24, 0.8, 0.19, jitter(rng, DARK, 10))
    p.disc(0.76, 0.8, 0.19, jitter(rng, DARK, 10))


def _windows(p: Patch, rng, x0, x1, y0, y1, count) -> None:
    glass = jitter(rng, (70, 90, 120))
    step = (x1 - x0) / count
    for i in range(count):
        p.rect(x0 + i * step + 0.15 * step, y0, x0 + (i + 0.85) * step, y1, glass)


def _bus(p: Patch, rng) -> None:
    p.rect(0.0, 0.0, 1.0, 0.85, jitter(rng, YELLOW))
    _windows(p, rng, 0.05, 0.95, 0.12, 0.45, 4)
    p.disc(0.2, 0.86, 0.13, jitter(rng, DARK, 10))
    p.disc(0.8, 0.86, 0.13, jitter(rng, DARK, 10))


def _train(p: Patch, rng) -> None:
    c = jitter(rng, [YELLOW, RED][rng.integers(2)])
    p.poly([(0.0, 0.08), (0.95, 0.08), (1.0, 0.35), (1.0, 0.9), (0.0, 0.9)], c)
    _windows(p, rng, 0.03, 0.9, 0.2, 0.5, 8)
    for x in (0.08, 0.3, 0.55, 0.8):
        p.rect(x, 0.88, x + 0.08, 1.0, jitter(rng, DARK, 10))


def _bottle(p: Patch, rng) -> None:
    c = jitter(rng, GREEN)
    p.rect(0.1, 0.38, 0.9, 1.0, c)
    p.rect(0.33, 0.0, 0.67, 0.4, c)


def _pottedplant(p: Patch, rng) -> None:
    leaf = jitter(rng, GREEN)
    for cx, cy, r in ((0.5, 0.25, 0.25), (0.28, 0.4, 0.2), (0.72, 0.4, 0.2), (0.5, 0.5, 0.15)):
        p.ellipse(cx, cy, r * 1.1, r, jitter(rng, leaf, 12))
    p.poly([(0.22, 0.62), (0.78, 0.62), (0.68, 1.0), (0.32, 1.0)], jitter(rng, (180, 90, 50)))


def _chair(p: Patch, rng) -> None:
    c = jitter(rng, BROWN)
    p.rect(0.0, 0.0, 0.16, 0.58, c)
    p.rect(0.0, 0.5, 1.0, 0.6, c)
    p.line([(0.06, 0.6), (0.06, 1.0)], 0.05, c)
    p.line([(0.94, 0.6), (0.94, 1.0)], 0.05, c)


def _diningtable(p: Patch, rng) -> None:
    c = jitter(rng, BROWN)
    p.rect(0.0, 0.0, 1.0, 0.14, c)
    p.line([(0.06, 0.14), (0.06, 1.0)], 0.07, c)
    p.line([(0.94, 0.14), (0.94, 1.0)], 0.07, c)


def _sofa(p: Patch, rng) -> None:
    c = jitter(rng, [RED, BLUE, GREEN][rng.integers(3)])
    p.rect(0.06, 0.0, 0.94, 0.5, c)
    p.rect(0.0, 0.45, 1.0, 0.88, jitter(rng, c, 12))
    p.rect(0.0, 0.25, 0.12, 0.88, c)
    p.rect(0.88, 0.25, 1.0, 0.88, c)
    p.rect(0.04, 0.88, 0.1, 1.0, jitter(rng, DARK, 10))
    p.rect(0.9, 0.88, 0.96, 1.0, jitter(rng, DARK, 10))


def _tvmonitor(p: Patch, rng) -> None:
    p.rect(0.0, 0.0, 1.0, 0.84, jitter(rng, DARK, 10))
    p.rect(0.08, 0.08, 0.92, 0.76, jitter(rng, (60, 85, 130)))
    p.rect(0.42, 0.84, 0.58, 1.0, jitter(rng, DARK, 10))


def _quadruped(p: Patch, colour, leg_len: float, ears: bool, neck: bool) -> None:
    """Side view of a four-legged animal: body ellipse, head, legs, tail."""
    body_y, body_ry = 1.0 - leg_len - 0.17, 0.2
    p.ellipse(0.47, body_y, 0.36, body_ry, colour)
    head = (0.88, body_y - 0.28 if neck else body_y - 0.12)
    if neck:
        p.line([(0.72, body_y - 0.05), head], 0.16, colour)
    p.disc(head[0], head[1], 0.13, colour)
    if ears:
        p.poly([(head[0] - 0.08, head[1] - 0.06), (head[0] - 0.02, head[1] - 0.06),
                (head[0] - 0.06, head[1] - 0.24)], colour)
        p.poly([(head[0] + 0.02, head[1] - 0.06), (head[0] + 0.08, head[1] - 0.06),
                (head[0] + 0.06, head[1] - 0.24)], colour)
    for x in (0.2, 0.32, 0.62, 0.74):
        p.line([(x, body_y), (x, 1.0)], 0.07, colour)
    p.line([(0.12, body_y - 0.05), (0.02, body_y + 0.15)], 0.05, colour)


def _cat_or_dog(p: Patch, rng) -> None:
    # cat and dog share shape and colours on purpose: only the scene tells them apart
    colour = jitter(rng, [ORANGE, GREY, (70, 55, 45)][rng.integers(3)])
    _quadruped(p, colour, leg_len=0.3, ears=True, neck=False)


def _horse(p: Patch, rng) -> None:
    _quadruped(p, jitter(rng, BROWN), leg_len=0.45, ears=False, neck=True)


def _cow(p: Patch, rng) -> None:
    _quadruped(p, jitter(rng, (235, 235, 230), 10), leg_len=0.3, ears=False, neck=False)
    spots = cv2.resize(rng.random((4, 5)).astype(np.float32), (p.w, p.h),
                       interpolation=cv2.INTER_CUBIC) > 0.6
    p.rgb[spots & (p.mask > 0)] = jitter(rng, DARK, 10)


def _sheep(p: Patch, rng) -> None:
    _quadruped(p, jitter(rng, (225, 220, 195), 10), leg_len=0.22, ears=False, neck=False)
    p.ellipse(0.47, 0.45, 0.42, 0.3, jitter(rng, (225, 220, 195), 10))  # wool
    dots = rng.random((p.h, p.w)) < 0.18
    p.rgb[dots & (p.mask > 0)] = jitter(rng, (165, 160, 145), 10)


def _person(p: Patch, rng) -> None:
    shirt = jitter(rng, [RED, BLUE, GREEN, YELLOW, WHITE, DARK][rng.integers(6)])
    trousers = jitter(rng, [BLUE, DARK, BROWN, GREY][rng.integers(4)])
    p.disc(0.5, 0.08, 0.075, jitter(rng, (225, 180, 150)))
    p.rect(0.28, 0.17, 0.72, 0.56, shirt)
    p.line([(0.3, 0.2), (0.05, 0.52)], 0.045, shirt)
    p.line([(0.7, 0.2), (0.95, 0.52)], 0.045, shirt)
    p.line([(0.4, 0.55), (0.33, 1.0)], 0.06, trousers)
    p.line([(0.6, 0.55), (0.67, 1.0)], 0.06, trousers)


class ClassSpec:
    """How class `class_id` looks and where it appears.

    aspect: width / height of its box; scenes: where it stands on the ground;
    in_sky: also flies in the sky of outdoor scenes; max_height: largest height as a
    fraction of the image height."""

    def __init__(self, draw, aspect: float, scenes: tuple[str, ...], in_sky: bool = False,
                 max_height: float = 0.75, weight: float = 1.0) -> None:
        self.draw, self.aspect, self.scenes = draw, aspect, scenes
        self.in_sky, self.max_height, self.weight = in_sky, max_height, weight


# Index = VOC class id (0 = background).
CLASS_SPECS: tuple[ClassSpec | None, ...] = (
    None,
    ClassSpec(_aeroplane, 2.0, (), in_sky=True, max_height=0.35),
    ClassSpec(_bicycle, 1.6, ("grass", "road")),
    ClassSpec(_bird, 1.5, ("water",), in_sky=True, max_height=0.2),
    ClassSpec(_boat, 1.5, ("water",)),
    ClassSpec(_bottle, 0.38, ("indoor",), max_height=0.45),
    ClassSpec(_bus, 1.8, ("road",)),
    ClassSpec(_car, 2.0, ("road",)),
    ClassSpec(_cat_or_dog, 1.35, ("indoor",), max_height=0.5),
    ClassSpec(_chair, 0.7, ("indoor",)),
    ClassSpec(_cow, 1.45, ("grass",)),
    ClassSpec(_diningtable, 1.8, ("indoor",)),
    ClassSpec(_cat_or_dog, 1.35, ("grass",), max_height=0.5),
    ClassSpec(_horse, 1.3, ("grass",)),
    ClassSpec(_motorbike, 1.6, ("road",)),
    ClassSpec(_person, 0.4, ("grass", "road", "indoor"), weight=1.5),
    ClassSpec(_pottedplant, 0.75, ("indoor",), max_height=0.55),
    ClassSpec(_sheep, 1.4, ("grass",)),
    ClassSpec(_sofa, 2.0, ("indoor",)),
    ClassSpec(_train, 3.5, ("road",)),
    ClassSpec(_tvmonitor, 1.3, ("indoor",)),
)
NUM_CLASSES = len(CLASS_SPECS)  # 21 with background


def draw_object(class_id: int, height: int, width: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (h, w, 3), mask bool (h, w)) of one instance, lightly shaded."""
    patch = Patch(height, width)
    CLASS_SPECS[class_id].draw(patch, rng)
    # per-pixel shading so surfaces are not flat colour
    shade = 1.0 + rng.normal(0.0, 0.06, (height, width, 1))
    rgb = np.clip(patch.rgb * shade, 0, 255).astype(np.uint8)
    return rgb, patch.mask > 0
