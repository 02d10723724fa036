"""Prompt datasets: the built-in ones (`prompts`), any file or Hub dataset (`files`), the column names (`columns`)."""

from rlhf_app.errors import UserError


class DataError(UserError, ValueError):
    """A dataset that cannot be used as it is; the message is one line that names the fix."""
