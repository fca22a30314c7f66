"""The one exception type users see: a single clear line naming the problem."""


class EdgeQwenError(Exception):
    """Bad input or an impossible request. The CLI prints `error: <message>` and exits 1."""


def quote(value, limit: int = 200) -> str:
    """`repr` of a value that came from a file or a user (a key, a tensor name, a string value),
    cut to about `limit` characters: safe in a one-line error message (control characters and
    newlines are escaped), however long or strange the original."""
    if isinstance(value, int) and value.bit_length() > 4 * limit:
        return f"<an integer of {value.bit_length()} bits>"      # repr would be huge (or refused)
    sized = isinstance(value, (str, bytes))
    try:
        text = repr(value[:limit] if sized else value)
    except ValueError:                  # e.g. a nested huge int: Python's int-digit limit
        return f"<a {type(value).__name__}>"
    cut = len(text) > limit + 2
    if cut:
        text = text[:limit]
    if cut or (sized and len(value) > limit):
        unit = "characters" if isinstance(value, str) else "bytes" if sized else "characters of repr"
        text += f"... ({len(value) if sized else len(repr(value))} {unit})"
    return text


def one_line(text: str, limit: int = 300) -> str:
    """A message from elsewhere (an exception's text) made into one safe line: control
    characters escaped, cut to about `limit` characters."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text[:limit * 2])
    return text if len(text) <= limit else text[:limit] + "..."


def check_text(text: str, what: str) -> str:
    """`text` if it can be encoded as UTF-8, else a clear error: a str holding lone surrogates
    (from undecodable bytes on a command line, or `"\\ud800"` in JSON) has no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise EdgeQwenError(f"{what} is not valid text: a lone surrogate {text[e.start]!r} at character {e.start} "
                            f"(invalid UTF-8 input?)") from None
    return text
