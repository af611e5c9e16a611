"""The profile's action table: DICOM PS3.15 Table E.1-1, edition 2026c, as dicom-anonymizer
2.1.0 ships it (BSD-licensed; one list of tags per action code). The actions:

    D  replace with a dummy value      Z  empty (zero length)      X  remove
    U  replace the UID (consistently)  and the combinations X/Z, X/D, Z/D, X/Z/D, X/Z/U*

A combination is read as the least destructive action that stays safe: X/Z, X/D, Z/D and
X/Z/D keep the attribute with a dummy or empty value (a type 1 or 2 attribute must stay),
X/Z/U* keeps a sequence and replaces the UIDs in it.
"""

from __future__ import annotations

from types import MappingProxyType

from dicomanonymizer.dicom_anonymization_databases import (  # type: ignore[import-untyped]
    dicomfields_2026c as source,
)

EDITION = "DICOM PS3.15 2026c Table E.1-1 (dicom-anonymizer 2.1.0)"

_LISTS = {
    "D": source.D_TAGS,
    "Z": source.Z_TAGS,
    "X": source.X_TAGS,
    "U": source.U_TAGS,
    "Z/D": source.Z_D_TAGS,
    "X/Z": source.X_Z_TAGS,
    "X/D": source.X_D_TAGS,
    "X/Z/D": source.X_Z_D_TAGS,
    "X/Z/U*": source.X_Z_U_STAR_TAGS,
}


def _table() -> dict[int, str]:
    found: dict[int, str] = {}
    for action, tags in _LISTS.items():
        for tag in tags:
            if len(tag) == 2:
                found[(tag[0] << 16) | tag[1]] = action
    return found


def _ranges() -> tuple[tuple[int, int, str], ...]:
    """The entries that name a range (curves 50xx, overlay data and comments 60xx): a
    (value, mask) pair of a whole tag, and the action."""
    found = []
    for action, tags in _LISTS.items():
        for tag in tags:
            if len(tag) == 4:
                group, element, group_mask, element_mask = tag
                found.append(((group << 16) | element, (group_mask << 16) | element_mask, action))
    return tuple(found)


ACTIONS = MappingProxyType(_table())
"""Each tag's action (as an int, group << 16 | element)."""
RANGES = _ranges()


def action_of(tag: int) -> str | None:
    """The table's action for a tag (its own entry, else a range's); None: not listed."""
    found = ACTIONS.get(tag)
    if found is not None:
        return found
    return next((action for value, mask, action in RANGES if tag & mask == value), None)
