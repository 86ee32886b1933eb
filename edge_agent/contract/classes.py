"""The ten Galaxy10 DECaLS classes, by their official ids.

The ids are the ``ans`` values of ``Galaxy10_DECals.h5``. The source paper's Table 1 lists the
same names alphabetically with other ids: never derive an id from a sorted list of names or
folders. Every mapping from a name or a folder to an id goes through :func:`class_id`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_agent.contract.errors import UnknownClassError


@dataclass(frozen=True)
class GalaxyClass:
    id: int
    name: str

    @property
    def slug(self) -> str:
        """Folder-friendly name, e.g. ``barred-spiral`` (the shared sample's folder names)."""
        return slugify(self.name)


CLASS_NAMES: tuple[str, ...] = (
    "Disturbed",
    "Merging",
    "Round Smooth",
    "In-between Round Smooth",
    "Cigar Shaped Smooth",
    "Barred Spiral",
    "Unbarred Tight Spiral",
    "Unbarred Loose Spiral",
    "Edge-on without Bulge",
    "Edge-on with Bulge",
)
NUM_CLASSES = len(CLASS_NAMES)
CLASSES: tuple[GalaxyClass, ...] = tuple(GalaxyClass(i, n) for i, n in enumerate(CLASS_NAMES))


def slugify(name: str) -> str:
    """Lower-case, with runs of anything but letters and digits turned into one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


_BY_KEY: dict[str, int] = {}
for _c in CLASSES:
    _BY_KEY[_c.slug] = _c.id
    # Also accept the underscore / no-separator spellings seen in public copies of the data,
    # e.g. "Barred_Spiral_Galaxies" is not accepted (extra word), but "barred_spiral" is.
    _BY_KEY[_c.slug.replace("-", "")] = _c.id


def class_id(name: str) -> int:
    """Official id of a class given its name or folder name, in any case or separator style.

    Raises :class:`UnknownClassError` naming the accepted names when it is not a class.
    """
    key = slugify(name)
    if key in _BY_KEY:
        return _BY_KEY[key]
    if key.replace("-", "") in _BY_KEY:
        return _BY_KEY[key.replace("-", "")]
    accepted = ", ".join(c.slug for c in CLASSES)
    raise UnknownClassError(f"unknown Galaxy10 class {name!r}; expected one of: {accepted}")


def class_name(class_id_: int) -> str:
    """Name of an official class id; raises :class:`UnknownClassError` outside 0..9."""
    if not isinstance(class_id_, int) or not 0 <= class_id_ < NUM_CLASSES:
        raise UnknownClassError(f"class id {class_id_!r} is outside 0..{NUM_CLASSES - 1}")
    return CLASS_NAMES[class_id_]
