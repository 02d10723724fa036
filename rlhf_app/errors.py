"""The one base of every error a user can fix: the run ends with its message, one line, no traceback.

Each part of the app raises its own subclass (ConfigError, DataError, RewardError, HubError, ...);
the command line catches `UserError` in one place, prints `error: <message>` and exits with 1.
"""


class UserError(Exception):
    """Bad input or an unreachable service: the message is one line that names the fix."""
