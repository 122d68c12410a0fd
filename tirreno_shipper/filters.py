"""Which requests become events: exclusion filters and eventType rules.

Both are compiled once per site. Exclusion runs in two steps because most of
a busy log is static assets: the path test is also offered to the parser
(`path_excluded`) so an excluded line costs a regex match and nothing more
(and once its request line is known, not even that: see `LineParser`);
the rest (user agent, status, method) needs the decoded request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tirreno_shipper import regex
from tirreno_shipper.config import ExcludeConfig, Rule
from tirreno_shipper.memo import Memo
from tirreno_shipper.records import Request

# Filter reasons; each is a metric label.
PATH = "path"
USER_AGENT = "user_agent"
STATUS = "status"
METHOD = "method"
NO_REQUEST = "no_request"  # no method or URL: a TLS handshake on port 80, a scanner's junk


_GLOBAL_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")


def _scoped(pattern: str) -> str:
    """``(?i)bot`` → ``(?i:bot)``: global flags are refused inside an alternation."""
    m = _GLOBAL_FLAGS.match(pattern)
    if m:
        return f"(?{m.group(1)}:{pattern[m.end() :]})"
    return f"(?:{pattern})"


def _union(patterns: Sequence[str]) -> regex.Pattern | None:
    if not patterns:
        return None
    return regex.compile("|".join(_scoped(p) for p in patterns))


def _status_test(spec: str) -> tuple[int, int]:
    """``"2xx"`` → (2, -1) (class), ``"404"`` → (-1, 404) (exact)."""
    if spec.endswith("xx"):
        return int(spec[0]), -1
    return -1, int(spec)


def status_matches(status: int | None, specs: Sequence[tuple[int, int]]) -> bool:
    if status is None:
        return False
    return any(status == exact or status // 100 == cls for cls, exact in specs)


class RequestFilter:
    """Exclusion rules of one site; ``excluded`` names the reason or returns None."""

    def __init__(self, config: ExcludeConfig) -> None:
        self._paths = _union(config.paths)
        self._agents = _union(config.user_agents)
        self._statuses = tuple(_status_test(str(s)) for s in config.statuses)
        self._methods = frozenset(m.upper() for m in config.methods)
        search = self._paths.search if self._paths is not None else None

        # Verdicts are memoised per distinct path and user agent: a site's log
        # repeats the same few thousand of each, and a union of regexes costs
        # a few microseconds per search against a dictionary hit's 50 ns.
        path_cache: Memo[str, bool] = Memo()
        known, remember = path_cache.get, path_cache.put

        def path_excluded(path: str) -> bool:
            verdict = known(path)
            if verdict is None:
                verdict = search is not None and search(path) is not None
                remember(path, verdict, len(path))
            return verdict

        self.path_excluded = path_excluded
        self._agent_cache: Memo[str, bool] = Memo()

    def excluded(self, req: Request, path_checked: bool = False) -> str | None:
        """Why ``req`` is excluded, or None. ``path_checked``: the parser already
        tested the path (`path_excluded`), so it is not searched twice."""
        if req.method is None or req.uri is None:
            return NO_REQUEST
        if not path_checked and req.path and self.path_excluded(req.path):
            return PATH
        if req.method in self._methods:
            return METHOD
        if self._statuses and status_matches(req.status, self._statuses):
            return STATUS
        agent = req.user_agent
        if self._agents is not None and agent:
            verdict = self._agent_cache.get(agent)
            if verdict is None:
                verdict = self._agents.search(agent) is not None
                self._agent_cache.put(agent, verdict, len(agent))
            if verdict:
                return USER_AGENT
        return None


class _CompiledRule:
    __slots__ = ("event_type", "keep_type", "methods", "path", "query", "statuses", "unresolved")

    def __init__(self, rule: Rule) -> None:
        self.event_type: str = rule.type
        self.methods = rule.methods()
        self.path = regex.compile(rule.path).search if rule.path else None
        self.query = rule.query
        specs = rule.statuses()
        self.statuses = tuple(_status_test(s) for s in specs) if specs else None
        self.unresolved = rule.unresolved
        self.keep_type = rule.keeps_type()

    def matches(self, req: Request) -> bool:
        if self.methods is not None and req.method not in self.methods:
            return False
        if self.path is not None and (req.path is None or self.path(req.path) is None):
            return False
        if self.query is not None and (req.uri is not None and "?" in req.uri) != self.query:
            return False
        return self.statuses is None or status_matches(req.status, self.statuses)


class RuleSet:
    """eventType rules: first match wins; otherwise ``page_view``.

    ``match`` returns the eventType and the rule's ``unresolved`` override
    (None: use the site's ``users.unresolved``).
    """

    DEFAULT = ("page_view", None, False)

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = tuple(_CompiledRule(r) for r in rules)
        # A rule looks only at method, path, query presence and status, and
        # those repeat: the verdict is memoised on exactly that key.
        self._memo: Memo[
            tuple[str | None, str | None, bool, int | None], tuple[str, str | None, bool]
        ]
        self._memo = Memo()

    def match(self, req: Request) -> tuple[str, str | None]:
        event_type, unresolved, _ = self.verdict(req)
        return event_type, unresolved

    def verdict(self, req: Request) -> tuple[str, str | None, bool]:
        """``match`` and whether the rule keeps its type at a status >= 400
        (`Rule.keeps_type`): then the mapper leaves httpCode out."""
        if not self._rules:
            return self.DEFAULT
        key = (req.method, req.path, req.uri is not None and "?" in req.uri, req.status)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        found: tuple[str, str | None, bool] = self.DEFAULT
        for rule in self._rules:
            if rule.matches(req):
                found = (rule.event_type, rule.unresolved, rule.keep_type)
                break
        self._memo.put(key, found, len(req.method or "") + len(req.path or ""))
        return found
