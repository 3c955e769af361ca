"""The one exception type that reaches users as a short message instead of a traceback."""


class UserError(ValueError):
    """Bad input from the user: the CLI prints the message (one or two lines) and exits 2.

    The message names the bad value and the fix. Raise it as early as possible,
    before anything is written, so that bad input never touches `results/`.
    """
