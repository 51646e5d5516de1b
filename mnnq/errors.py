"""Errors that carry their exit code.

Every command maps failures onto three exit codes:
0 ok / within budget, 1 budget missed (outputs still written, marked), 2 bad input or usage;
130 when interrupted (Ctrl-C).
"""

EXIT_OK = 0
EXIT_MISSED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class MnnqError(Exception):
    """A failure the user can act on; ``str(err)`` is one line naming the thing and the fix."""

    exit_code = EXIT_BAD_INPUT


class BadInput(MnnqError):
    """A file, flag or config the user gave is missing, malformed or inconsistent."""


class NativeFailure(MnnqError):
    """The MNN converter or runtime failed or crashed; ``tail`` holds its last output lines."""

    def __init__(self, message: str, tail: str = ""):
        super().__init__(message)
        self.tail = tail


class PluginError(MnnqError):
    """Plugins disagree (duplicate names) or a requested plugin does not exist."""


class Interrupted(MnnqError):
    """Ctrl-C (SIGINT) stopped a run before it wrote anything; ``str(err)`` says where it stopped."""

    exit_code = EXIT_INTERRUPTED
