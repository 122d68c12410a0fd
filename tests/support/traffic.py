"""The request driver: varied, realistic (and some hostile) HTTP traffic over raw sockets.

Every request is written byte by byte (so raw UTF-8 in the request line, quotes and
backslashes in headers and TLS-looking garbage reach the server exactly as intended)
on a fresh connection to 127.0.0.1 or [::1], and its answer's status is read back.
`Traffic.send_many` returns what it sent as `Sent` records: the tests compute the
events they expect from these, independently of the shipper's parser.

Each request that carries a User-Agent has a unique token ``drv/SEQ`` in it; the few
without one carry ``v=SEQ`` in their query string. `token_of` finds it in an event.
"""

from __future__ import annotations

import http.client
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

# Kinds of request, with their weights in the mix.
KINDS: dict[str, int] = {
    "page": 24,  # a logged-in user views a page
    "page_anonymous": 8,  # no cookie at all
    "page_unknown_session": 4,  # a cookie nobody has (expired, forged)
    "page_sql_injection": 2,  # a cookie crafted to break a naive query
    "login_form": 3,  # GET /login/
    "login_ok": 6,  # POST /login/ answered 302
    "login_fail": 6,  # POST /login/ answered 200
    "logout": 4,
    "search": 8,  # /search?q=...
    "search_empty": 2,  # /search without a query string
    "static": 10,  # assets: never events
    "probe": 4,  # health checkers: never events
    "head": 2,  # HEAD: never an event
    "not_found": 5,
    "non_ascii_raw": 3,  # raw UTF-8 bytes in the request line
    "non_ascii_encoded": 2,  # the same, percent-encoded
    "no_user_agent": 2,
    "malformed": 4,  # not HTTP: never events
}
# Kinds that can never become an event whoever sends them.
NEVER_EVENTS = frozenset({"static", "probe", "head", "malformed"})

PAGES = ("/", "/about/", "/account/", *(f"/products/{n}.html" for n in range(1, 21)))
STATIC = ("/static/app.css", "/static/app.js?v=3", "/img/logo.png", "/favicon.ico", "/robots.txt")
PROBES = (("/healthz", "kube-probe/1.29"), ("/", "kube-probe/1.29"), ("/", "ELB-HealthChecker/2.0"))
SEARCH_TERMS = ("shoes", "rote%20Schuhe", "caf%C3%A9", "a+b", "%22quoted%22", "x%5Cy")
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    'Mozilla/5.0 (Windows NT 10.0) "quoted" \\back\\slash\\',
    "Mozilla/5.0 (Macintosh) Ünïcödé 日本語 ß",
    'curl/8.5.0 \\"escaped-looking\\" \\x41',
    "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80) Presto/2.5.25 Version/10.54",
)
REFERERS = (
    "https://example.com/",
    'https://example.com/page?x="y"&z=\\w',
    "https://例え.jp/ページ?q=ü",
    "http://127.0.0.1/search?q=shoes",
)
LANGUAGES = ("en-US,en;q=0.9", "de-DE,de;q=0.8,en;q=0.5", "fr")
MALFORMED = (
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    + bytes(range(32))
    + b"\r\n\r\n",  # TLS ClientHello
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: no host header\r\n\r\n",
    b"GET /\x00nul HTTP/1.1\r\nHost: x\r\n\r\n",
    b'\r\n\r\n\xff\xfe\xfd garbage "\\ \r\n\r\n',
)


@dataclass(frozen=True, slots=True)
class Sent:
    """One request as sent, and the status the server answered (None: no HTTP answer)."""

    seq: int
    kind: str
    host: str  # the client address: 127.0.0.1 or ::1
    method: str | None  # None for malformed requests
    target: str | None  # the request target, raw UTF-8 bytes decoded
    user_agent: str | None
    referer: str | None
    accept_language: str | None
    cookies: Mapping[str, str]
    extra_headers: Mapping[str, str]
    raw: bytes
    status: int | None
    started: float
    finished: float

    @property
    def session_key(self) -> str | None:
        return self.cookies.get("sessionid")


@dataclass(slots=True)
class _Plan:
    kind: str
    host: str
    method: str | None = None
    target: str | None = None
    user_agent: str | None = None
    referer: str | None = None
    accept_language: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    extra_headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


def token_of(fields: Mapping[str, str]) -> int | None:
    """The driver's sequence number carried by an event (its user agent or its url)."""
    m = re.search(r"drv/(\d+)", fields.get("userAgent", ""))
    if m is None:
        m = re.search(r"[?&]v=(\d+)", fields.get("url", ""))
    return int(m.group(1)) if m else None


class Traffic:
    """Sends a seeded random mix of requests to one server (see `KINDS`).

    ``sessions`` are session keys that resolve to users; ``decoy_cookie_values``
    collects every other cookie value sent (unknown sessions, csrftokens,
    injection attempts) so a test can look for them where they must not be.
    """

    _seq_lock = threading.Lock()
    _next_seq = 1  # global across drivers: tokens are unique in a whole test run

    def __init__(
        self,
        port: int,
        sessions: Sequence[str],
        *,
        seed: int,
        ipv6_share: float = 0.3,
        timeout: float = 10.0,
    ) -> None:
        if not sessions:
            raise ValueError("the driver needs at least one session key that resolves to a user")
        self.port = port
        self.sessions = list(sessions)
        self.rng = random.Random(seed)
        self.ipv6_share = ipv6_share
        self.timeout = timeout
        self.sent: list[Sent] = []
        self.decoy_cookie_values: set[str] = set()
        self._lock = threading.Lock()
        self._kinds = list(KINDS)
        self._weights = [KINDS[k] for k in self._kinds]

    @classmethod
    def _take_seq(cls) -> int:
        with cls._seq_lock:
            seq = cls._next_seq
            cls._next_seq += 1
            return seq

    # -- planning ------------------------------------------------------------

    def _decoy(self, value: str) -> str:
        self.decoy_cookie_values.add(value)
        return value

    def _cookies(self, known: bool) -> dict[str, str]:
        rng = self.rng
        cookies: dict[str, str] = {}
        if rng.random() < 0.5:
            cookies["csrftoken"] = self._decoy(secrets.token_hex(16))
        if known:
            cookies["sessionid"] = rng.choice(self.sessions)
        if rng.random() < 0.3:
            cookies["theme"] = "dark"
        return cookies

    def _plan(self, seq: int, kind: str | None = None) -> _Plan:
        rng = self.rng
        kind = kind or rng.choices(self._kinds, self._weights)[0]
        host = "::1" if rng.random() < self.ipv6_share else "127.0.0.1"
        p = _Plan(kind, host, method="GET")
        p.user_agent = f"{rng.choice(USER_AGENTS)} drv/{seq}"
        if rng.random() < 0.6:
            p.referer = rng.choice(REFERERS)
        if rng.random() < 0.3:
            p.accept_language = rng.choice(LANGUAGES)
        logged_in = rng.random() < 0.75
        if kind == "page":
            p.target, p.cookies = rng.choice(PAGES), self._cookies(True)
        elif kind == "page_anonymous":
            p.target, p.cookies = rng.choice(PAGES), self._cookies(False)
        elif kind == "page_unknown_session":
            p.target = rng.choice(PAGES)
            p.cookies = {**self._cookies(False), "sessionid": self._decoy(secrets.token_hex(16))}
        elif kind == "page_sql_injection":
            p.target = rng.choice(PAGES)
            attack = rng.choice(("x'OR'1'='1'--", 'x"or"1"="1', "1'UNION/**/SELECT/**/1--"))
            p.cookies = {"sessionid": self._decoy(attack + secrets.token_hex(6))}
        elif kind == "login_form":
            p.target, p.cookies = "/login/", self._cookies(logged_in)
        elif kind in ("login_ok", "login_fail"):
            p.method, p.target, p.cookies = "POST", "/login/", self._cookies(logged_in)
            if kind == "login_ok":
                p.extra_headers["X-Login"] = "ok"
        elif kind == "logout":
            p.target, p.cookies = "/logout/", self._cookies(logged_in)
        elif kind == "search":
            query = f"q={rng.choice(SEARCH_TERMS)}"
            if rng.random() < 0.3:
                query += f"&page={rng.randint(2, 9)}"
            if rng.random() < 0.25:
                query += f"&token={secrets.token_hex(8)}"  # redacted by the config
            p.target, p.cookies = f"/search?{query}", self._cookies(logged_in)
        elif kind == "search_empty":
            p.target, p.cookies = "/search", self._cookies(True)
        elif kind == "static":
            p.target, p.cookies = rng.choice(STATIC), self._cookies(logged_in)
        elif kind == "probe":
            p.target, agent = rng.choice(PROBES)
            p.user_agent = f"{agent} drv/{seq}"
            p.cookies = self._cookies(rng.random() < 0.5)
        elif kind == "head":
            p.method, p.target, p.cookies = "HEAD", rng.choice(PAGES), self._cookies(True)
        elif kind == "not_found":
            p.target, p.cookies = f"/missing/{seq}", self._cookies(True)
        elif kind == "non_ascii_raw":
            p.target = rng.choice(("/café/", f"/ünïcødé/日本/{seq}", "/café/?q=ü"))
            p.cookies = self._cookies(True)
        elif kind == "non_ascii_encoded":
            p.target = rng.choice(("/caf%C3%A9/", f"/%C3%BCn%C3%AF/{seq}"))
            p.cookies = self._cookies(True)
        elif kind == "no_user_agent":
            p.target, p.user_agent, p.cookies = f"/about/?v={seq}", None, self._cookies(True)
        elif kind == "malformed":
            p.method = p.target = p.user_agent = p.referer = p.accept_language = None
            p.raw = rng.choice(MALFORMED)
            return p
        else:  # pragma: no cover - KINDS and this chain are edited together
            raise AssertionError(kind)
        p.raw = self._render(p)
        return p

    @staticmethod
    def _render(p: _Plan) -> bytes:
        assert p.method is not None and p.target is not None
        lines = [f"{p.method} {p.target} HTTP/1.1", "Host: shop.test"]
        if p.user_agent is not None:
            lines.append(f"User-Agent: {p.user_agent}")
        if p.referer is not None:
            lines.append(f"Referer: {p.referer}")
        if p.accept_language is not None:
            lines.append(f"Accept-Language: {p.accept_language}")
        if p.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in p.cookies.items()))
        lines.extend(f"{k}: {v}" for k, v in p.extra_headers.items())
        body = "user=someone&password=hunter2" if p.method == "POST" else ""
        if p.method == "POST":
            lines += [
                "Content-Type: application/x-www-form-urlencoded",
                f"Content-Length: {len(body)}",
            ]
        lines.append("Connection: close")
        # Raw UTF-8 on the wire, in the request line and in header values alike.
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")

    # -- sending -------------------------------------------------------------

    def _exchange(self, p: _Plan) -> int | None:
        with socket.create_connection((p.host, self.port), timeout=self.timeout) as sock:
            sock.sendall(p.raw)
            resp = http.client.HTTPResponse(sock, method=p.method or "GET")
            try:
                resp.begin()
                resp.read()
            except (http.client.HTTPException, OSError):
                return None
            finally:
                resp.close()
            return resp.status

    def send_one(self, kind: str | None = None) -> Sent:
        """Plan, send and record one request (``kind``: one of `KINDS`, or random)."""
        seq = self._take_seq()
        with self._lock:
            plan = self._plan(seq, kind)
        started = time.time()
        status = self._exchange(plan)
        finished = time.time()
        sent = Sent(
            seq=seq,
            kind=plan.kind,
            host=plan.host,
            method=plan.method,
            target=plan.target,
            user_agent=plan.user_agent,
            referer=plan.referer,
            accept_language=plan.accept_language,
            cookies=dict(plan.cookies),
            extra_headers=dict(plan.extra_headers),
            raw=plan.raw,
            status=status,
            started=started,
            finished=finished,
        )
        with self._lock:
            self.sent.append(sent)
        return sent

    def send_many(self, count: int, pause: threading.Event | None = None) -> list[Sent]:
        """Send ``count`` requests one after another; wait while ``pause`` is set."""
        out = []
        for _ in range(count):
            while pause is not None and pause.is_set():
                time.sleep(0.01)
            out.append(self.send_one())
        return out

    def __iter__(self) -> Iterator[Sent]:
        with self._lock:
            return iter(list(self.sent))


__all__ = ["KINDS", "NEVER_EVENTS", "Sent", "Traffic", "token_of"]
