"""Cutting a read of a log into lines: the tail's hot loop, on plain bytes."""

from __future__ import annotations

TOO_LONG = "too_long"


def split_lines(
    data: bytes, offset: int, max_line: int, max_lines: int
) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]], int, bytes]:
    """The complete lines of ``data`` (read at ``offset``), at most ``max_lines``.

    Returns the lines as ``(offset, bytes without "\\n" or "\\r\\n")``, the lines
    longer than ``max_line`` as ``(offset, "too_long")``, the offset after the last
    complete line, and what follows it (a partial line, or lines past ``max_lines``).
    """
    parts = data.split(b"\n", max_lines)
    rest = parts.pop()
    lines: list[tuple[int, bytes]] = []
    skipped: list[tuple[int, str]] = []
    pos = offset
    append = lines.append
    # Two loops rather than one test per line: most logs have no "\r" at all.
    if b"\r" in data:
        for seg in parts:
            n = len(seg)
            if n > max_line:
                skipped.append((pos, TOO_LONG))
            elif seg[-1:] == b"\r":
                append((pos, seg[:-1]))
            else:
                append((pos, seg))
            pos += n + 1
    else:
        for seg in parts:
            n = len(seg)
            if n > max_line:
                skipped.append((pos, TOO_LONG))
            else:
                append((pos, seg))
            pos += n + 1
    return lines, skipped, pos, rest
