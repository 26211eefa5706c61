"""User-facing errors: one line naming the file, the item and the fault.

The CLI catches :class:`CytobenchError`, prints ``str(err)`` and exits with code 2,
so any bad input reaches the user as one readable line, never a deep traceback.
"""

from __future__ import annotations

from pathlib import Path


class CytobenchError(Exception):
    """Base class of errors caused by the user's input or configuration."""


class BadInputError(CytobenchError):
    """Unreadable or invalid input file.

    Args:
        path: the file at fault.
        fault: what is wrong, e.g. ``"annotation 17 has a negative width"``.
        item: optional item inside the file, e.g. ``"annotation 17"`` (prefixed to the fault).
    """

    def __init__(self, path: str | Path, fault: str, item: str | None = None) -> None:
        self.path = str(path)
        self.item = item
        self.fault = fault
        where = f"{self.path}: {item}: " if item else f"{self.path}: "
        super().__init__(f"{type(self).__name__}: {where}{fault}")


class CorruptAnnotation(BadInputError):
    """A COCO annotation that cannot be valid (bad size, box outside the image, unknown category)."""


class UnreadableImage(BadInputError):
    """An image file that is missing or cannot be decoded."""


class TrainingDiverged(CytobenchError):
    """The training loss became NaN or infinite."""
