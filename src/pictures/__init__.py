"""Pictures of series and predictions: PNGs rendered from DICOM files, off the receive path.

`render` holds the pure functions (a thumbnail, an overlay of SEG and RTSTRUCT regions on a
slice, the middle slice of a series); `worker.Renderer` runs them in a separate, lowered,
memory-capped process with a timeout and keeps their PNGs in a cache folder.
"""

from isdr.errors import IsdrError


class PictureError(IsdrError):
    """A picture cannot be made: the file is unreadable, too large, or the worker failed.

    The message names the file (never a patient) and says why in words.
    """
