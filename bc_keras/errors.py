"""User-facing errors: what a script prints as one line (exit 2); anything else is a bug.

Every problem a user can fix (a missing folder, a corrupt file, a wrong flag, an unusable run
folder) raises a `UserError` whose message names the problem and the fix. Scripts print those
as `error: <message>` and keep the traceback of every other exception, so an internal Keras or
TensorFlow failure never looks like a user mistake.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix; the message is one line naming the problem and the fix."""


class ConfigError(UserError):
    """Flags or settings that do not work together."""


class DataError(UserError):
    """The user's data: a missing or malformed folder, archive, image, fold file or manifest."""


class ModelFileError(UserError):
    """A model file that cannot be used: missing, not HDF5, truncated or of another kind."""


class WeightsError(UserError):
    """Backbone weights that cannot be used (not found offline, wrong file, wrong architecture)."""


class RunError(UserError):
    """A run folder or output location that cannot be used as asked (locked, finished, a
    resume with other settings, an unwritable folder)."""


class TrainingError(UserError):
    """Training that cannot give a usable model (diverged, one class only), with what to try."""


def one_line(text: str) -> str:
    """Folds white space so that a message (e.g. a library's) stays on one line."""
    return " ".join(str(text).split())


def shorten(error, limit: int = 300) -> str:
    """A library's message on one line, cut at a word boundary after at most `limit` chars."""
    text = one_line(error) or type(error).__name__
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return f"{cut} ..."
