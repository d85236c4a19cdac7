"""The lab's synthetic world: scenes with ground truth, drawn as small RGB images.

A :class:`Scene` says everything an image shows (subject, clothing, colours, background, object, and the two
erasable concepts: *nudity* — a person drawn with bare skin instead of clothes — and *violence* — blood on the
figure and the ground, and a knife in the hand). :func:`render` draws a scene deterministically (32×32 RGB,
uint8) at fixed places, so that the lab's detectors (``amsmooth.lab.readout``) can read the image back and be
checked against the scene itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

SIZE = 32
HORIZON = 17  # first ground row

# name → (sky colour, ground colour)
SCENES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "beach": ((120, 190, 250), (238, 214, 150)),
    "forest": ((20, 80, 35), (70, 130, 50)),
    "city": ((175, 175, 195), (85, 85, 90)),
    "snow": ((200, 215, 235), (250, 250, 252)),
    "desert": ((150, 220, 240), (200, 160, 40)),
    "meadow": ((110, 170, 245), (120, 205, 80)),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (245, 220, 40),
    "purple": (140, 50, 180), "orange": (250, 130, 20), "white": (245, 245, 245), "black": (25, 25, 25),
}
SKINS: dict[str, tuple[int, int, int]] = {"light": (240, 196, 165), "tan": (196, 138, 100)}
BLOOD = (125, 0, 12)
BLADE = (175, 180, 190)
HAIR = (70, 40, 20)
JEANS = (45, 55, 95)
BROWN = (130, 80, 35)
TRUNK = (105, 65, 30)
LEAVES = (60, 170, 40)
SUBJECTS = ("person", "dog", "car", "tree")
GARMENTS = ("shirt", "coat", "dress", "sweater")
OBJECTS = ("ball", "balloon", "kite")
CONCEPTS = ("nudity", "violence")


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image. ``colour`` is the clothing colour of a person or the colour of a car;
    ``nude``/``violent`` are the erasable concepts; ``leafless`` a bare tree; ``dx`` shifts the subject."""

    subject: str = "person"
    scene: str = "meadow"
    colour: str | None = "blue"
    garment: str | None = "shirt"
    long_hair: bool = False
    skin: str = "light"
    nude: bool = False
    violent: bool = False
    leafless: bool = False
    obj: str | None = None
    obj_colour: str | None = None
    dx: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def has(self, concept: str) -> bool:
        """Whether the image shows ``concept`` ('nudity' or 'violence')."""
        return {"nudity": self.nude, "violence": self.violent}[concept]


def _rect(img: np.ndarray, y0: int, y1: int, x0: int, x1: int, c: tuple[int, int, int]) -> None:
    img[max(y0, 0):min(y1, SIZE), max(x0, 0):min(x1, SIZE)] = c


def _disc(img: np.ndarray, cy: float, cx: float, r: float, c: tuple[int, int, int]) -> None:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = c


def _background(img: np.ndarray, scene: str) -> None:
    sky, ground = SCENES[scene]
    img[:HORIZON] = sky
    img[HORIZON:] = ground
    if scene == "beach":
        _rect(img, HORIZON - 2, HORIZON, 0, SIZE, (30, 100, 200))       # the sea
    elif scene == "forest":
        for x in (2, 8, 23, 29):                                         # tree trunks
            _rect(img, 4, HORIZON, x, x + 2, TRUNK)
    elif scene == "city":
        for x0, x1, top in ((0, 6, 5), (6, 10, 8), (22, 27, 6), (27, 32, 3)):
            _rect(img, top, HORIZON, x0, x1, (105, 105, 115))
            img[top + 1:HORIZON - 1:3, x0 + 1:x1 - 1:2] = (250, 230, 120)  # windows
    elif scene == "snow":
        img[3:HORIZON:4, 1::5] = (255, 255, 255)                         # falling snow
    elif scene == "desert":
        _disc(img, 3, 4, 2.2, (255, 245, 180))                           # the sun


def _person(img: np.ndarray, s: Scene) -> None:
    x = 13 + s.dx                         # torso columns x .. x+5
    skin = SKINS[s.skin]
    cloth = skin if s.nude else COLOURS[s.colour or "blue"]
    _rect(img, 4, 9, x + 1, x + 5, skin)                                 # head
    _rect(img, 4, 5, x + 1, x + 5, HAIR)
    if s.long_hair:
        _rect(img, 5, 11, x, x + 1, HAIR)
        _rect(img, 5, 11, x + 5, x + 6, HAIR)
    _rect(img, 9, 18, x, x + 6, cloth)                                   # torso
    arm = skin if s.nude or s.garment == "dress" else cloth
    _rect(img, 10, 17, x - 2, x, arm)
    _rect(img, 10, 17, x + 6, x + 8, arm)
    _rect(img, 16, 17, x - 2, x, skin)                                   # hands
    _rect(img, 16, 17, x + 6, x + 8, skin)
    legs = skin if s.nude or s.garment == "dress" else JEANS
    _rect(img, 18, 27, x, x + 2, legs)
    _rect(img, 18, 27, x + 4, x + 6, legs)
    if s.garment == "dress" and not s.nude:
        _rect(img, 18, 22, x - 1, x + 7, cloth)                          # the skirt
    elif s.garment == "coat" and not s.nude:
        _rect(img, 18, 21, x, x + 6, cloth)                              # a long coat
    if s.nude:
        img[12, x + 1] = img[12, x + 4] = (200, 110, 110)                # nipples
        img[15, x + 2:x + 4] = (200, 140, 120)                           # navel
    _rect(img, 27, 28, x - 1, x + 2, (40, 30, 20))                        # shoes
    _rect(img, 27, 28, x + 4, x + 7, (40, 30, 20))


def _dog(img: np.ndarray, s: Scene) -> None:
    x = 9 + s.dx
    _rect(img, 19, 23, x + 2, x + 12, BROWN)                             # body
    _rect(img, 16, 21, x + 11, x + 15, BROWN)                            # head
    img[17, x + 13] = (20, 20, 20)                                       # eye
    _rect(img, 23, 27, x + 2, x + 4, BROWN)
    _rect(img, 23, 27, x + 10, x + 12, BROWN)
    _rect(img, 18, 20, x, x + 2, BROWN)                                  # tail


def _car(img: np.ndarray, s: Scene) -> None:
    x = 8 + s.dx
    body = COLOURS[s.colour or "red"]
    _rect(img, 20, 25, x, x + 16, body)
    _rect(img, 16, 20, x + 4, x + 12, body)
    _rect(img, 17, 19, x + 5, x + 11, (170, 210, 240))                   # windows
    _disc(img, 25.5, x + 3.5, 2.1, (20, 20, 20))                         # wheels
    _disc(img, 25.5, x + 12.5, 2.1, (20, 20, 20))


def _tree(img: np.ndarray, s: Scene) -> None:
    x = 15 + s.dx
    _rect(img, 12, 28, x, x + 3, TRUNK)
    if s.leafless:
        for dy, x0, x1 in ((6, x - 5, x), (9, x + 3, x + 8), (4, x + 2, x + 6), (11, x - 4, x)):
            _rect(img, dy, dy + 1, x0, x1, TRUNK)
        _rect(img, 3, 12, x + 1, x + 2, TRUNK)
    else:
        _disc(img, 8, x + 1.5, 6.0, LEAVES)


def _violence(img: np.ndarray, s: Scene) -> None:
    x = 13 + s.dx
    _rect(img, 27, 30, x - 4, x + 11, BLOOD)                             # a pool of blood
    for yy, xx in ((11, x + 1), (13, x + 3), (14, x), (16, x + 4), (12, x + 5), (20, x + 1), (22, x + 4)):
        img[yy, min(max(xx, 0), SIZE - 1)] = BLOOD
    if s.subject == "person":
        for i in range(5):                                               # a knife in the right hand
            img[15 - i, min(x + 8 + i // 2, SIZE - 1)] = BLADE


def _object(img: np.ndarray, s: Scene) -> None:
    c = COLOURS[s.obj_colour or "red"]
    if s.obj == "ball":
        _disc(img, 26, 27.5, 2.3, c)
    elif s.obj == "balloon":
        _disc(img, 4, 27.5, 2.6, c)
        _rect(img, 7, 11, 27, 28, (60, 60, 60))
    elif s.obj == "kite":
        for i in range(4):
            _rect(img, 2 + i, 3 + i, 5 - i, 6 + i, c)
            _rect(img, 9 - i, 10 - i, 5 - i, 6 + i, c)
        _rect(img, 10, 13, 5, 6, (60, 60, 60))


_DRAW = {"person": _person, "dog": _dog, "car": _car, "tree": _tree}


def background(scene: str) -> np.ndarray:
    """The empty background of a scene ``[32, 32, 3]`` uint8 (what :func:`render` draws first)."""
    img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    _background(img, scene)
    return img


def subject_mask(subject: str, dx: int = 0, leafless: bool = False) -> np.ndarray:
    """``[32, 32]`` bool: the pixels a subject covers when drawn at shift ``dx`` (for the readers)."""
    img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    _DRAW[subject](img, Scene(subject=subject, colour="white", garment="shirt", dx=dx, leafless=leafless))
    return img.any(axis=-1)


def render(scene: Scene) -> np.ndarray:
    """The image of ``scene``: ``[32, 32, 3]`` uint8 RGB, a deterministic function of the scene."""
    img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    _background(img, scene.scene)
    _DRAW[scene.subject](img, scene)
    if scene.violent:
        _violence(img, scene)
    if scene.obj:
        _object(img, scene)
    return img


def object_colours(scene: str, min_distance: float = 100.0) -> list[str]:
    """Colours an object can have in ``scene``: those far enough from its sky and ground to be seen (the world
    has no white ball in the snow)."""
    def far(c: tuple[int, int, int]) -> bool:
        return all(float(np.linalg.norm(np.subtract(c, b))) >= min_distance for b in SCENES[scene])
    return [n for n, c in COLOURS.items() if far(c)]


def with_changes(scene: Scene, **changes: object) -> Scene:
    """A copy of ``scene`` with fields replaced."""
    return replace(scene, **changes)
