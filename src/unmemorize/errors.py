"""The one exception type that reaches users as a message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a file, a model, an option. The CLI prints it and exits with 2.

    The message must name the thing that is wrong (file, line, key) and, where possible, what
    would be accepted.
    """
