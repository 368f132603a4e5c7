"""The one exception type that means "the user asked for something wrong".

The CLI turns it into a one-line message and exit status 2; anything else is a bug
and keeps its traceback.
"""


class BenchError(ValueError):
    """Bad input from the user: unknown name, bad value, missing data set."""
