"""Container log files: the CRI and docker ``json-file`` framing around each line.

The kubelet keeps a container's output in ``/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log``
(linked from ``/var/log/containers/<pod>_<ns>_<container>-<id>.log``) and rotates it
by rename at a size limit; the tail follows those files like any other. What
differs is each line:

- CRI (containerd, CRI-O): ``<RFC3339Nano time> <stdout|stderr> <P|F> <text>``; a line
  longer than the runtime's buffer (16 KiB in containerd) is written as ``P``
  (partial) parts and ends with an ``F`` part.
- docker ``json-file``: ``{"log":"<text>\\n","stream":"stdout","time":"..."}``; a line
  longer than 16 KiB is split into entries whose ``log`` has no final newline.

`Framing.unwrap` turns the framed lines of a chunk into the log's own lines: parts
joined, each record at the offset of its first part (so request ids do not depend
on how the runtime split it), other streams left out. A record whose last part is
not written yet ends the chunk before its first part: it is read again, whole,
with the next chunk, so a checkpoint never falls inside a record.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tirreno_shipper.records import Chunk

if TYPE_CHECKING:
    from tirreno_shipper.config import LogSource

Runtime = Literal["cri", "docker"]
Stream = Literal["stdout", "stderr"]

# The kubelet's name for a container's log in /var/log/containers.
_CONTAINER_NAME = re.compile(
    r"^(?P<pod>[^_]+)_(?P<namespace>[^_]+)_(?P<container>.+)-(?P<id>[0-9a-f]{64})\.log$"
)
MALFORMED = "container_malformed"
TOO_LONG = "too_long"


@dataclass(slots=True, frozen=True)
class ContainerName:
    """What a file name in ``/var/log/containers`` says about the container."""

    pod: str
    namespace: str
    container: str


def container_name(path: str) -> ContainerName | None:
    """The pod, namespace and container of a kubelet log path, or None for another name."""
    m = _CONTAINER_NAME.match(os.path.basename(path))
    if m is None:
        return None
    return ContainerName(m["pod"], m["namespace"], m["container"])


@dataclass(slots=True, frozen=True)
class Selector:
    """Which containers' logs to read, by glob on the names the file name carries.

    A file is read when it matches ``include`` (every non-empty list in it) and no
    list of ``exclude``; a file whose name is not a kubelet name is read only
    when nothing is asked of the names at all.
    """

    include: Mapping[str, Sequence[str]]
    exclude: Mapping[str, Sequence[str]]

    def __call__(self, path: str) -> bool:
        if not any(self.include.values()) and not any(self.exclude.values()):
            return True
        name = container_name(path)
        if name is None:
            return False
        for key, globs in self.include.items():
            if globs and not _any_match(getattr(name, key), globs):
                return False
        return not any(
            globs and _any_match(getattr(name, key), globs) for key, globs in self.exclude.items()
        )


def _any_match(value: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, g) for g in globs)


class Framing:
    """Unwraps the CRI or docker framing of a chunk's lines; see the module docstring."""

    # The longest framed line a runtime writes: a 16 KiB part, JSON-escaped at worst
    # (``\u00XX`` for a control byte: 6 bytes), and the framing around it. The
    # record's own limit, ``max_line_bytes``, applies to the joined text.
    RAW_LINE_MAX = 6 * 16384 + 512

    __slots__ = ("_max", "_runtime", "_streams")

    def __init__(self, runtime: Runtime, streams: Sequence[Stream], max_line_bytes: int) -> None:
        self._runtime = runtime
        self._streams = frozenset(s.encode() for s in streams)
        self._max = max_line_bytes

    def unwrap(
        self, lines: Sequence[tuple[int, bytes]], end: int, *, final: bool
    ) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]], int]:
        """The records of ``lines`` (framed lines ending at ``end``), what was skipped,
        and where the chunk ends: before a record whose last part is not written yet,
        unless ``final`` (the file is done: a record cut short is a record).

        The runtime writes each stream's parts in order, but the two streams'
        parts may interleave, so parts are joined per stream; and when the chunk
        ends before an unfinished record, a record of the other stream whose
        parts straddle that end is read again with the next chunk too.
        """
        # (start, last part's offset, record or skip reason) per finished record.
        done: list[tuple[int, int, bytes | str]] = []
        open_: dict[bytes, tuple[int, list[bytes], int]] = {}
        split = self._split_cri if self._runtime == "cri" else self._split_docker
        for off, raw in lines:
            frame = split(raw)
            if frame is None:
                done.append((off, off, MALFORMED))
                continue
            stream, partial, text = frame
            if stream not in self._streams:
                continue
            start, parts, size = open_.pop(stream, (off, [], 0))
            parts.append(text)
            size += len(text)
            if partial:
                open_[stream] = (start, parts, size)
            else:
                done.append((start, off, self._record(parts, size)))
        if final:
            done.extend((start, start, self._record(p, n)) for start, p, n in open_.values())
        elif open_:
            end = min(start for start, _, _ in open_.values())
            while True:
                straddling = [s for s, last, _ in done if s < end <= last]
                if not straddling:
                    break
                end = min(straddling)
        done.sort(key=lambda t: t[0])
        out: list[tuple[int, bytes]] = []
        skipped: list[tuple[int, str]] = []
        for start, _last, rec in done:
            if start >= end:
                continue
            if isinstance(rec, str):
                skipped.append((start, rec))
            else:
                out.append((start, rec))
        return out, skipped, end

    def _record(self, parts: list[bytes], size: int) -> bytes | str:
        if size > self._max:
            return TOO_LONG
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @staticmethod
    def _split_cri(raw: bytes) -> tuple[bytes, bool, bytes] | None:
        # <time> <stream> <tag> <text>: the tag is P or F, or P/F followed by
        # ':'-separated fields in newer runtimes.
        fields = raw.split(b" ", 3)
        if len(fields) < 3:
            return None
        tag = fields[2]
        flag = tag[:1]
        if flag not in (b"P", b"F") or (len(tag) > 1 and tag[1:2] != b":"):
            return None
        return fields[1], flag == b"P", fields[3] if len(fields) == 4 else b""

    @staticmethod
    def _split_docker(raw: bytes) -> tuple[bytes, bool, bytes] | None:
        try:
            entry = json.loads(raw)
            text = entry["log"]
            stream = entry.get("stream", "stdout")
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(text, str) or not isinstance(stream, str):
            return None
        if text.endswith("\n"):
            text = text[:-1]
            partial = False
        else:
            partial = True
        data = text.encode("utf-8", "surrogateescape")
        return stream.encode(), partial, data[:-1] if data.endswith(b"\r") and not partial else data


def container_input(src: LogSource) -> tuple[Framing | None, Selector | None]:
    """The framing and file selection a ``logs`` entry asks for (None, None for a plain log)."""
    if src.container is None:
        return None, None
    framing = Framing(src.container, src.streams, src.max_line_bytes)
    return framing, Selector(src.include.by_part(), src.exclude.by_part())


def unframe(chunks: Iterator[Chunk], framing: Framing) -> Iterator[Chunk]:
    """Whole-file chunks (`reader.file_chunks`: backfill, the dry run) with the framing
    removed; the parts of a record split across two chunks are carried to the second."""
    carry: list[tuple[int, bytes]] = []
    chunk = next(chunks, None)
    while chunk is not None:
        following = next(chunks, None)
        lines = [*carry, *chunk.lines]
        start = lines[0][0] if carry else chunk.start_offset
        records, bad, end = framing.unwrap(lines, chunk.end_offset, final=following is None)
        carry = [line for line in lines if line[0] >= end]
        skipped = sorted([*(s for s in chunk.skipped if s[0] < end), *bad])
        if records or skipped:
            yield Chunk(chunk.path, chunk.file, start, end, records, skipped)
        chunk = following
