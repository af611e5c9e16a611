"""Where an instance goes under INCOMING_DIR: pure functions over its sorting tags.

INCOMING_DIR/<PatientID>/<study>/<series>/<Modality>/<SOPInstanceUID>.dcm, where the study
and series folders are `<description>_<hash of the UID>`: readable, and unique per UID, so
two studies of one patient with the same descriptions never share a folder. Every
component is sanitised, so no tag value can name a path outside the tree.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path, PurePosixPath

from isdr.domain.keys import SortKeys

MAX_COMPONENT_LENGTH = 64
MAX_COMPONENT_BYTES = 128  # file systems limit a name to 255 bytes, not characters
UID_HASH_LENGTH = 12
_UNSAFE = re.compile(r"[^\w.+-]+")
_VALID_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def sanitize_component(value: str, placeholder: str) -> str:
    """One safe folder or file name: no separators, no dot-names, bounded, never empty."""
    text = unicodedata.normalize("NFKC", value)
    text = _UNSAFE.sub("_", text).strip("._-")[:MAX_COMPONENT_LENGTH]
    while len(text.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        text = text[:-1]
    return text.rstrip("._-") or placeholder


def uid_hash(uid: str) -> str:
    """A short, stable digest of a UID that tells folders apart."""
    return hashlib.sha1(uid.encode("utf-8", "surrogatepass")).hexdigest()[:UID_HASH_LENGTH]


def _labelled(description: str, uid: str, placeholder: str) -> str:
    label = sanitize_component(description, placeholder)
    return f"{label}_{uid_hash(uid)}"


def _file_name(sop_instance_uid: str) -> str:
    safe = sanitize_component(sop_instance_uid, "NO_SOP_INSTANCE_UID")
    if safe != sop_instance_uid or not _VALID_UID.match(sop_instance_uid):
        safe = f"{safe}_{uid_hash(sop_instance_uid)}"
    return f"{safe}.dcm"


def series_folder(keys: SortKeys) -> PurePosixPath:
    """The series' folder, relative to INCOMING_DIR."""
    return PurePosixPath(
        sanitize_component(keys.patient_id, "NO_PATIENT_ID"),
        _labelled(keys.study_description, keys.study_instance_uid, "STUDY"),
        _labelled(keys.series_description, keys.series_instance_uid, "SERIES"),
        sanitize_component(keys.modality, "NO_MODALITY"),
    )


def instance_relpath(keys: SortKeys) -> PurePosixPath:
    """The instance's file, relative to INCOMING_DIR."""
    return series_folder(keys) / _file_name(keys.sop_instance_uid)


def resolve_inside(root: Path, relpath: PurePosixPath) -> Path:
    """root/relpath, refusing a relative path that could leave root.

    A lexical check (the components come from sanitize_component, which never yields a
    separator or a dot-name); it costs no system call on the path of every C-STORE.
    """
    if relpath.is_absolute() or any(part in ("", ".", "..") for part in relpath.parts):
        raise ValueError(f"{relpath} escapes {root}")
    return root / relpath


def loggable(root: Path, path: Path) -> str:
    """A path fit for logs above DEBUG: relative to the tree, its first folder masked.

    The first folder of the sorted tree is the PatientID.
    """
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path.name
    return "/".join(("…", *parts[1:])) if len(parts) > 1 else "/".join(parts)
