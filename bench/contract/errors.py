"""The one exception type that means "the user asked for something wrong".

The CLI turns it into a one-line message and exit status 2; anything else is a bug
and keeps its traceback.
"""


class BenchError(ValueError):
    """Bad input from the user: unknown name, bad value, missing data set."""


MESSAGE_LIMIT = 400  # characters of one error line; a huge value is cut in its middle


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` as the one line the CLI prints: whitespace runs (newlines included) become
    one space, and a message longer than ``limit`` (a 1 MB value echoed back) keeps its head,
    which says what is wrong, and its tail, with the count of what was left out between."""
    text = " ".join(str(message).split())
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 4):]
    return f"{head} ... [{len(text) - len(head) - len(tail)} characters left out] ... {tail}"
