"""The one exception type that the command line turns into a one-line error message."""


class CatdogError(Exception):
    """A problem with the user's input (paths, data, checkpoints, options), stated plainly.

    The CLI prints ``error: <message>`` and exits with status 2, with no traceback.
    """
