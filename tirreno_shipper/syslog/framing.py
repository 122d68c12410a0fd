"""The syslog header around a message: RFC 5424 and RFC 3164 (BSD) framing.

nginx (``access_log syslog:server=...``) writes RFC 3164: ``<PRI>Mmm dd hh:mm:ss HOST TAG:
MSG`` (no ``HOST`` with ``nohostname``). util-linux ``logger`` (Apache's piped logs) writes
RFC 5424 by default: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG``, or RFC 3164 with
``--rfc3164``; glibc's ``syslog()`` writes RFC 3164 without a host. `message` returns
the ``MSG`` part, which is the log line the configured format parses.
"""

from __future__ import annotations

import re

MALFORMED = "syslog_malformed"

_PRI = re.compile(rb"<(\d{1,3})>")
# RFC 3164's TIMESTAMP: "Mmm dd hh:mm:ss" (a day below 10 has a space before it).
_BSD_TIME = re.compile(rb"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ")
# A TAG: up to 32 characters of a program name, an optional [pid], then ':'.
_TAG = re.compile(rb"[^\s:\[\]]{1,48}(?:\[[^\]\s]*\])?:")
_BOM = b"\xef\xbb\xbf"


def message(datagram: bytes) -> bytes | None:
    """The message in one syslog datagram, or None when it has no syslog header."""
    data = datagram.rstrip(b"\r\n\x00")
    m = _PRI.match(data)
    if m is None or int(m.group(1)) > 191:
        return None
    rest = data[m.end() :]
    if rest.startswith(b"1 "):
        return _rfc5424(rest[2:])
    return _rfc3164(rest)


def _rfc5424(rest: bytes) -> bytes | None:
    # TIMESTAMP HOSTNAME APP-NAME PROCID MSGID: five fields without spaces.
    fields = rest.split(b" ", 5)
    if len(fields) < 6:
        return b"" if len(fields) == 5 else None
    sd_and_msg = fields[5]
    if sd_and_msg.startswith(b"-"):
        msg = sd_and_msg[1:]
    elif sd_and_msg.startswith(b"["):
        end = _sd_end(sd_and_msg)
        if end < 0:
            return None
        msg = sd_and_msg[end:]
    else:
        return None
    if msg.startswith(b" "):
        msg = msg[1:]
    elif msg:
        return None
    return msg.removeprefix(_BOM)


def _sd_end(data: bytes) -> int:
    """Where the STRUCTURED-DATA elements (``[id k="v"]...``) starting ``data`` end."""
    i, n = 0, len(data)
    while i < n and data[i : i + 1] == b"[":
        i += 1
        quoted = False
        while i < n:
            c = data[i : i + 1]
            if quoted:
                if c == b"\\":
                    i += 1
                elif c == b'"':
                    quoted = False
            elif c == b'"':
                quoted = True
            elif c == b"]":
                break
            i += 1
        if i >= n:
            return -1
        i += 1
    return i


def _rfc3164(rest: bytes) -> bytes | None:
    m = _BSD_TIME.match(rest)
    if m is None:
        return None
    rest = rest[m.end() :]
    tag = _TAG.match(rest)
    if tag is None:
        # HOSTNAME first, then the TAG.
        host, sep, after = rest.partition(b" ")
        if not sep or not host:
            return None
        tag = _TAG.match(after)
        if tag is None:
            return None
        rest = after
    msg = rest[tag.end() :]
    return msg[1:] if msg.startswith(b" ") else msg
