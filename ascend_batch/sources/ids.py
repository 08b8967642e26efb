"""Image ids: how a file's name becomes its id, and back.

An id is ``NAME`` for a file, or ``ARCHIVE::MEMBER`` for an archive member, where each part is a
name (a relative path, a file name or a list entry as written; an archive's member name) written
with :func:`escape_name`. The escaping is reversible, so two different files never share an id:

* a backslash is written ``\\\\`` (two backslashes);
* a byte of a file name that is not UTF-8 (Python keeps it as the surrogate escape U+DC80..U+DCFF)
  is written ``\\xNN`` (two lowercase hex digits); any other lone surrogate ``\\uNNNN``;
* a colon that touches another colon or ends the name is written ``\\:``, so ``::`` inside an id
  only ever separates an archive from its member;
* every other character is kept as it is (ids are valid UTF-8, ready for Parquet).

Zip member names are taken as the zip decodes them (UTF-8, or cp437 when the zip does not say),
so they never hold ``\\xNN``; list-file entries are UTF-8 text, so neither do they.

So ``caf<0xE9>.jpg`` (Latin-1 bytes) is ``caf\\xe9.jpg``, a file literally named ``caf\\xe9.jpg``
is ``caf\\\\xe9.jpg``, and ``a::b.jpg`` is ``a\\:\\:b.jpg``. :func:`parse_id` reverses an id into
its name and member (``os.fsencode`` turns a name back into the file system's bytes).
"""

from __future__ import annotations

import re

ARCHIVE_SEPARATOR = "::"

# characters that escape_name rewrites: backslash, any surrogate, a colon touching a colon or at the end
_ESCAPE_RE = re.compile("[\\\\\ud800-\udfff]|:(?=:|\\Z)|(?<=:):")
_UNESCAPE_RE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[\\:])")
# NAME::MEMBER: the NAME part holds no unescaped "::" (escaped pairs are consumed whole)
_SPLIT_RE = re.compile(r"((?:[^\\:]|\\.|:(?!:))*)::(.*)", re.DOTALL)


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    if ch == "\\" or ch == ":":
        return "\\" + ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a raw byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _unescape_char(match: re.Match[str]) -> str:
    body = match.group(1)
    if body[0] == "x":
        return chr(0xDC00 + int(body[1:], 16))
    if body[0] == "u":
        return chr(int(body[1:], 16))
    return body


def escape_name(name: str) -> str:
    """``name`` (as Python reads it from the file system, an archive or a list file) written for an
    id: valid UTF-8, and different names always give different results (see the module's rules)."""
    if "\\" not in name and "::" not in name and not name.endswith(":"):
        if name.isascii():
            return name
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return name
    return _ESCAPE_RE.sub(_escape_char, name)


def unescape_name(text: str) -> str:
    """The name that :func:`escape_name` wrote as ``text``. Raises :class:`ValueError` for text
    that no name escapes to (a stray backslash, an unescaped ``::``, upper-case hex, ...)."""
    name = _UNESCAPE_RE.sub(_unescape_char, text) if "\\" in text else text
    if escape_name(name) != text:
        raise ValueError(f"not an escaped name: {text!r}")
    return name


def make_id(name: str, member: str | None = None) -> str:
    """The id of file ``name``, or of ``member`` of archive ``name``."""
    if member is None:
        return escape_name(name)
    return member_id(escape_name(name), member)


def member_id(archive_id: str, member: str) -> str:
    """The id of ``member`` of the archive whose (already escaped) id is ``archive_id``."""
    return f"{archive_id}{ARCHIVE_SEPARATOR}{escape_name(member)}"


def parse_id(item_id: str) -> tuple[str, str | None]:
    """``(name, member)`` of an id (``member`` is ``None`` for a file): the reverse of
    :func:`make_id`. Raises :class:`ValueError` for a string that is not an id."""
    match = _SPLIT_RE.fullmatch(item_id)
    if match is None:
        return unescape_name(item_id), None
    return unescape_name(match.group(1)), unescape_name(match.group(2))


def printable(text: str) -> str:
    """``text`` as valid UTF-8 for a message (not an id: lossy): bytes of a file name that are not
    UTF-8, kept by Python as surrogate escapes, become ``\\xNN``; backslashes stay as they are."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text
