"""One site's path from raw lines to events: parse → filter → resolve → map.

`SitePipeline.process` turns a `Chunk` into the events to spool and the
`Counts` of what happened to each line. Counts are returned, not published,
because a chunk whose user lookups fail is processed again later: only the
daemon, after the chunk is committed, adds them to the metrics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tirreno_shipper import metrics
from tirreno_shipper.config import LogSource, SiteConfig
from tirreno_shipper.events import EventMapper, request_ids
from tirreno_shipper.filters import PATH, RequestFilter, RuleSet
from tirreno_shipper.formats import compile_format
from tirreno_shipper.parse import EXCLUDED_PATH, TOO_LONG, LineParser, line_parser
from tirreno_shipper.records import Chunk, Event, Request, User
from tirreno_shipper.users import UserResolver, anonymous_user
from tirreno_shipper.users.keys import response_fields

LOGIN = "account_login"

BAD_ADDRESS = "bad_address"  # remote_addr is not an IP address (a hostname with HostnameLookups on)


@dataclass(slots=True)
class Counts:
    """What happened to the lines of one chunk (or of a whole run, merged)."""

    lines: int = 0
    parsed: int = 0
    events: int = 0
    unparseable: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    unresolved: Counter[str] = field(default_factory=Counter)
    fixed: Counter[str] = field(default_factory=Counter)
    already: int = 0  # backfill: lines skipped because an earlier backfill shipped them

    def merge(self, other: Counts) -> None:
        self.lines += other.lines
        self.parsed += other.parsed
        self.events += other.events
        self.already += other.already
        self.unparseable.update(other.unparseable)
        self.filtered.update(other.filtered)
        self.unresolved.update(other.unresolved)
        self.fixed.update(other.fixed)

    def publish(self, site: str) -> None:
        """Add these counts to the Prometheus metrics of ``site``."""
        metrics.LINES_READ.labels(site=site).inc(self.lines)
        metrics.LINES_PARSED.labels(site=site).inc(self.parsed)
        for reason, n in self.unparseable.items():
            metrics.LINES_UNPARSEABLE.labels(site=site, reason=reason).inc(n)
        for reason, n in self.filtered.items():
            metrics.REQUESTS_FILTERED.labels(site=site, reason=reason).inc(n)
        for outcome, n in self.unresolved.items():
            metrics.REQUESTS_UNRESOLVED.labels(site=site, outcome=outcome).inc(n)
        for key, n in self.fixed.items():
            name, _, reason = key.partition(":")
            metrics.FIELDS_TRUNCATED.labels(site=site, field=name, reason=reason).inc(n)

    def summary(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "parsed": self.parsed,
            "unparseable": dict(self.unparseable),
            "filtered": dict(self.filtered),
            "unresolved": dict(self.unresolved),
            "fixed": dict(self.fixed),
            "events": self.events,
            **({"already_backfilled": self.already} if self.already else {}),
        }


def extra_fields(site: SiteConfig) -> list[str]:
    """Variables beyond the standard ones that this site's mapping needs."""
    extra: list[str] = []
    if site.events.client_ip.forwarded_for:
        extra.append("http_x_forwarded_for")
    if site.users is not None:
        key = site.users.key
        if key.variable:
            extra.append(key.variable)
        if key.cookie and key.response != "off":
            # A login's new session is only in the response: Set-Cookie as logged.
            extra.extend(response_fields(key.cookie))
    return extra


class SitePipeline:
    """Parse, filter, resolve and map the lines of one site's logs.

    Not thread-safe: each site's tail thread owns its pipeline (and resolver).
    """

    def __init__(self, site: SiteConfig, resolver: UserResolver | None) -> None:
        self.site = site
        self.name = site.name
        self.resolver = resolver
        self.filter = RequestFilter(site.events.exclude)
        self.rules = RuleSet(site.events.rules)
        self.mapper = EventMapper(site.events.client_ip, site.events.redact_query)
        self.unresolved = site.users.unresolved if site.users is not None else "anonymous"
        self._anonymous: dict[str, User] = {}
        self._extra = extra_fields(site)
        self._cookie = site.users.key.cookie if site.users is not None else None
        self._login_response = (
            "prefer" if site.users is not None and site.users.key.response != "off" else "off"
        )

    def parser(self, source: LogSource) -> LineParser:
        """A parser for one ``logs`` entry, with this site's path exclusions built in."""
        fmt = compile_format(source.format, cookie_name=self._cookie)
        return line_parser(fmt, self._cookie, self._extra, exclude_path=self.filter.path_excluded)

    def _anonymous_user(self, ip: str) -> User:
        user = self._anonymous.get(ip)
        if user is None:
            if len(self._anonymous) > 65536:
                self._anonymous.clear()
            user = self._anonymous[ip] = anonymous_user(ip)
        return user

    def process(self, chunk: Chunk, parser: LineParser) -> tuple[list[Event], Counts]:
        """Events of a chunk, in file order. Raises `ResolverError` if the user
        database fails: the caller keeps the chunk and tries again later."""
        counts = Counts(lines=len(chunk.lines) + len(chunk.skipped))
        for _offset, skip in chunk.skipped:
            counts.unparseable[skip or TOO_LONG] += 1
        events: list[Event] = []
        rid = request_ids(self.name, chunk.file.key())
        parse = parser.fast
        excluded = self.filter.excluded
        match_rule = self.rules.verdict
        client_of = self.mapper.client.of
        build = self.mapper.build
        resolver = self.resolver
        key_for = resolver.key_for if resolver is not None else None
        login_response = self._login_response
        self.mapper.fixed = counts.fixed
        # Lines that make an event, and their session keys: the chunk's keys are
        # resolved together (its distinct uncached ones looked up in one go) before
        # any event is built, so a failing database leaves nothing half done.
        kept: list[tuple[int, Request, str, str, str | None, bool, str | None]] = []
        keys: list[str] = []
        for offset, raw in chunk.lines:
            req = parse(raw)
            if type(req) is str:
                if req == EXCLUDED_PATH:
                    counts.parsed += 1
                    counts.filtered[PATH] += 1
                else:
                    counts.unparseable[req] += 1
                continue
            assert isinstance(req, Request)
            counts.parsed += 1
            reason = excluded(req, True)
            if reason is not None:
                counts.filtered[reason] += 1
                continue
            ip = client_of(req)
            if ip is None:
                counts.unparseable[BAD_ADDRESS] += 1
                continue
            # At a status >= 400 the mapper sends page_error, or keeps the rule's
            # type (keep_type), as tirreno would store it.
            event_type, unresolved, keep_type = match_rule(req)
            key: str | None = None
            if key_for is not None:
                # A login line carries the session the visitor had before (none, or
                # an anonymous one): who logged in is the response's new cookie.
                key = key_for(req, response=login_response if event_type == LOGIN else None)
                if key is not None:
                    keys.append(key)
            kept.append((offset, req, ip, event_type, unresolved, keep_type, key))
        users = resolver.resolve_many(keys) if resolver is not None and keys else {}
        user_of = users.get
        for offset, req, ip, event_type, unresolved, keep_type, key in kept:
            user = user_of(key) if key is not None else None
            if user is None:
                if (unresolved or self.unresolved) == "drop":
                    counts.unresolved["dropped"] += 1
                    continue
                counts.unresolved["anonymous"] += 1
                user = self._anonymous_user(ip)
            events.append(build(req, user, ip, event_type, rid(offset), keep_type=keep_type))
        counts.events = len(events)
        return events, counts
