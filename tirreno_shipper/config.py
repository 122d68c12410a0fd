"""YAML configuration → frozen, validated models.

Every problem is reported at once, each with its key path and a hint
(``sites[0].sensor.rate_limit: Input should be a valid number``), and no
secret value is ever echoed back. ``${VAR}`` and ``${VAR:-default}`` are
expanded from the environment in every string; only upper-case names are
expanded, so nginx's own ``${remote_addr}`` syntax in a format string is left
alone. ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tirreno_shipper import regex
from tirreno_shipper.errors import ConfigError, FormatError
from tirreno_shipper.formats import compile_format, header_variable

EventType = Literal[
    "page_view",
    "page_edit",
    "page_delete",
    "page_search",
    "page_error",
    "field_edit",
    "account_login",
    "account_logout",
    "account_login_fail",
    "account_registration",
    "account_email_change",
    "account_password_change",
    "account_edit",
]
# The 13 types tirreno knows; any other value it silently turns into page_view.
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

# Keys whose values are credentials: never shown in an error message.
SECRET_KEYS = frozenset({"api_key", "database", "password", "secret", "previous_secrets"})
# Query parameters of a database URL whose values are credentials (compared
# case-insensitively): masked wherever the URL is shown.
CREDENTIAL_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword", "secret", "token"})

# Static assets, and the paths health checkers and scanners hit; documented in
# the README. An operator who sets ``exclude.paths`` replaces this list.
DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = (
    r"\.(?:css|js|mjs|map|png|jpe?g|gif|svg|ico|webp|avif|bmp|woff2?|ttf|otf|eot|mp4|webm|mp3)$",
    r"^/(?:static|assets|media|_next/static)/",
    r"^/(?:favicon\.ico|robots\.txt|sitemap\.xml|apple-touch-icon[^/]*\.png)$",
    r"^/(?:healthz?|readyz|livez|ping|server-status|nginx_status)$",
)
DEFAULT_EXCLUDE_USER_AGENTS: tuple[str, ...] = (
    r"kube-probe/",
    r"ELB-HealthChecker",
    r"GoogleHC/",
    r"Prometheus/",
    r"Blackbox Exporter",
    r"UptimeRobot",
    r"Pingdom",
    r"StatusCake",
    r"nagios-plugins|check_http",
    r"Consul Health Check",
)
DEFAULT_REDACT_QUERY: tuple[str, ...] = (
    "password",
    "passwd",
    "pass",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "secret",
    "api_key",
    "apikey",
    "key",
    "client_secret",
    "state",
    "session",
    "sessionid",
    "session_id",
    "sid",
    "jsessionid",
    "phpsessid",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
)


# Searched in a visitor's text: compiled by the linear-time engine (see `regex`).
Regex = Annotated[str, AfterValidator(regex.check)]


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP network (e.g. 10.0.0.0/8): {exc}") from exc
    return value


Network = Annotated[str, AfterValidator(_check_network)]

_STATUS_RE = re.compile(r"^[1-5](?:xx|[0-9]{2})$")


def _check_status(value: str | int) -> str:
    text = str(value).lower()
    if not _STATUS_RE.match(text):
        raise ValueError("a status is a code like 404 or a class like 2xx, 3xx, 4xx, 5xx")
    return text


Status = Annotated[str | int, AfterValidator(_check_status)]


class _Model(BaseModel):
    # defer_build: the validators are built when a configuration is first read, not
    # at import: half of this module's import time, which every command paid, also
    # those that read no configuration (detect-format, sink, man, --help).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"
    # Seconds between the daemon's `stats` lines (per site: lines, events, sent,
    # rejected since the last one; backlog and lag now); 0 = none.
    stats_interval: float = Field(default=60.0, ge=0)


class MetricsConfig(_Model):
    listen: str = "127.0.0.1:9108"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError('expected "host:port", e.g. "127.0.0.1:9108" or "0.0.0.0:9108"')
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"  # noqa: S104

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class SensorConfig(_Model):
    url: str
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    # tirreno's default bucket is 200 requests per rolling 20 s per key: 9/s with
    # a burst of 10 can never put more than 190 in any 20 s window.
    rate_limit: float = Field(default=9.0, ge=0)
    burst: int = Field(default=10, ge=1)
    concurrency: int = Field(default=4, ge=1, le=64)
    timeout: float = Field(default=5.0, gt=0)
    verify_tls: bool = True
    ca_bundle: Path | None = None
    retry_max_delay: float = Field(default=300.0, gt=0)
    # This many empty-200 answers in a row for events that passed our own
    # validation means a wrong key or URL, not bad events.
    reject_threshold: int = Field(default=5, ge=1)
    max_attempts: int = Field(default=0, ge=0)  # 0: retry forever

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http(s) URL such as https://tirreno.example.com/sensor/")
        return value

    @field_validator("api_key")
    @classmethod
    def _header_safe_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # "${TIRRENO_API_KEY}" from an env file often carries a newline or a blank;
        # sent as it is, no HTTP client would even send the header.
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("is empty")
        if not all("!" <= c <= "~" for c in key):
            raise ValueError(
                "holds a space, a control or a non-ASCII character, which an Api-Key header "
                "cannot carry (the key is not shown); check the variable or file it comes from"
            )
        return SecretStr(key)

    @model_validator(mode="after")
    def _one_key(self) -> SensorConfig:
        if (self.api_key is None) == (self.api_key_file is None):
            raise ValueError("set exactly one of api_key (e.g. ${TIRRENO_API_KEY}) or api_key_file")
        return self

    def key(self) -> str:
        """The API key text (read from ``api_key_file`` at load time)."""
        assert self.api_key is not None
        return self.api_key.get_secret_value()


class NginxFormat(_Model):
    nginx: str


class ApacheFormat(_Model):
    apache: str


class JsonFormat(_Model):
    # Our field name (nginx variable name without '$') -> the key in the JSON line,
    # for logs whose keys differ from the variable names.
    json_: dict[str, str] = Field(default_factory=dict, alias="json")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


FormatSpec = str | NginxFormat | ApacheFormat | JsonFormat


def _stdout_only() -> list[Literal["stdout", "stderr"]]:
    return ["stdout"]


class ContainerSelect(_Model):
    """Containers named by globs on the parts of a kubelet log file's name."""

    namespaces: list[str] = Field(default_factory=list)
    pods: list[str] = Field(default_factory=list)
    containers: list[str] = Field(default_factory=list)

    def by_part(self) -> dict[str, list[str]]:
        return {"namespace": self.namespaces, "pod": self.pods, "container": self.containers}


class LogSource(_Model):
    path: str = ""
    # Or a syslog listener: unix:/run/x.sock or udp://127.0.0.1:5140.
    syslog: str | None = None
    format: FormatSpec = "nginx_combined"
    start_at: Literal["end", "beginning"] = "end"
    max_line_bytes: int = Field(default=65536, ge=256)
    # Container logs (the kubelet's files): the runtime's framing around each line.
    container: Literal["cri", "docker"] | None = None
    streams: list[Literal["stdout", "stderr"]] = Field(default_factory=_stdout_only)
    include: ContainerSelect = Field(default_factory=ContainerSelect)
    exclude: ContainerSelect = Field(default_factory=ContainerSelect)

    @property
    def where(self) -> str:
        """The file pattern, or ``syslog:<address>``: how logs, checkpoints and status name it."""
        return self.path or f"syslog:{self.syslog}"

    @field_validator("syslog")
    @classmethod
    def _syslog_address(cls, value: str | None) -> str | None:
        if value is not None:
            from tirreno_shipper.syslog.address import Address

            return str(Address.parse(value))
        return value

    @model_validator(mode="after")
    def _path_or_syslog(self) -> LogSource:
        if bool(self.path) == (self.syslog is not None):
            raise ValueError(
                "set exactly one of path (a file or a glob) and syslog "
                "(unix:/run/x.sock or udp://127.0.0.1:5140)"
            )
        if self.syslog is not None and self.container is not None:
            raise ValueError("container applies to files; a syslog message has no runtime framing")
        return self

    @model_validator(mode="after")
    def _container_keys(self) -> LogSource:
        if self.container is None:
            given = [k for k in ("streams", "include", "exclude") if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{', '.join(given)} select container logs: set container: cri (containerd, "
                    "CRI-O) or container: docker (json-file) too"
                )
        elif not self.streams:
            raise ValueError("streams is empty: name stdout, stderr or both")
        return self

    @property
    def format_label(self) -> str:
        """The format as an operator names it: the preset, or which kind of custom one."""
        fmt = self.format
        if isinstance(fmt, str):
            return fmt
        return f"a custom {type(fmt).__name__.removesuffix('Format').lower()} format"

    @field_validator("path")
    @classmethod
    def _not_a_folder(cls, value: str) -> str:
        # The tail follows regular files only: a folder would be watched forever
        # and never read, with nothing to say why.
        if value and not any(c in value for c in "*?[") and os.path.isdir(value):
            folder = value.rstrip("/")
            raise ValueError(
                f"{value} is a folder: name the log file in it (e.g. {folder}/access.log) "
                f"or a glob (e.g. {folder}/*.access.log)"
            )
        return value


Digest = Literal["sha256", "md5", "sha1"]
# nginx's $cookie_NAME takes the name's characters from this set only.
NGINX_COOKIE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
FRAMEWORKS = ("django", "laravel", "rails", "express", "flask", "php", "wordpress", "spring")
Framework = Literal[
    "django", "laravel", "rails", "rails_auth", "express", "flask", "php", "wordpress", "spring"
]
UnsealScheme = Literal["django", "itsdangerous", "laravel", "rails", "express"]


class StripPrefix(_Model):
    strip_prefix: str = Field(min_length=1)


class Split(_Model):
    split: str = Field(min_length=1)
    index: int = 0


class RegexStep(_Model):
    regex: Regex

    @field_validator("regex")
    @classmethod
    def _one_group(cls, value: str) -> str:
        if regex.compile(value).groups != 1:
            raise ValueError("a key regex has exactly one capture group: the key")
        return value


class Unseal(_Model):
    """``{unseal: SCHEME, ...options}``: the framework's signed or encrypted cookie."""

    model_config = ConfigDict(extra="allow", frozen=True)
    unseal: UnsealScheme

    def options(self) -> dict[str, str]:
        return {k: str(v) for k, v in (self.model_extra or {}).items()}


Transform = (
    Literal["url_decode", "base64_decode", "sha256", "md5", "sha1"]
    | StripPrefix
    | Split
    | RegexStep
    | Unseal
)


class KeySpec(_Model):
    cookie: str | None = Field(default=None, pattern=r"^[^\s;,=]+$")
    field: str | None = None
    header: str | None = None
    transform: Literal["none", "sha256", "md5", "sha1"] = "none"  # the same as a last step
    transforms: list[Transform] = Field(default_factory=list)
    # The response's new session cookie (a login issues one): used when the request
    # has none (fallback), always when present (prefer), or never (off).
    response: Literal["off", "fallback", "prefer"] = "fallback"

    @field_validator("field")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        # Written as in nginx.conf ("$http_x_user") or as the parser names it
        # ("http_x_user"): one name from here on, for the parser and the resolver.
        return value.strip().removeprefix("$") if value is not None else None

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySpec:
        given = [k for k in ("cookie", "field", "header") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("set exactly one of cookie, field or header")
        if self.cookie and "*" in self.cookie.rstrip("*"):
            raise ValueError(
                "a cookie name pattern has one '*', at its end (wordpress_logged_in_*)"
            )
        return self

    def steps(self) -> list[Transform]:
        """The transforms in order, ``transform`` (the older spelling) last."""
        return [*self.transforms, *([self.transform] if self.transform != "none" else [])]

    @property
    def label(self) -> str:
        """Where the key is read, for people: ``cookie 'sessionid'``, ``header 'X-User'``."""
        if self.cookie:
            return f"cookie {self.cookie!r}"
        if self.header:
            return f"header {self.header!r}"
        return f"field {self.field!r}"

    @property
    def variable(self) -> str | None:
        """The log variable that holds the key (``field``, or ``header`` as the
        parser names it: ``X-User`` is ``http_x_user``); None for a cookie."""
        return header_variable(self.header) if self.header else self.field


class RedisStore(_Model):
    url: str = "redis://127.0.0.1:6379/0"
    key: str = "{key}"
    field: str | None = None  # HGET this field; GET when unset

    @field_validator("key")
    @classmethod
    def _has_key(cls, value: str) -> str:
        if "{key}" not in value:
            raise ValueError("the Redis key template must hold {key} (e.g. 'sess:{key}')")
        return value


class StoreConfig(_Model):
    sql: str | None = None
    redis: RedisStore | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StoreConfig:
        given = [k for k in ("sql", "redis", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of sql, redis or file")
        if self.sql is not None and not re.search(r"(?<!:):key\b", self.sql):
            raise ValueError("store.sql must use the bound parameter :key")
        if self.file is not None:
            name = self.file.rpartition("/")[2]
            if not self.file.startswith("/") or "{key}" not in name:
                raise ValueError(
                    "store.file is an absolute path whose file name holds {key} "
                    "(e.g. /var/lib/php/sessions/sess_{key})"
                )
        return self

    @property
    def kind(self) -> Literal["sql", "redis", "file"]:
        return "sql" if self.sql is not None else "redis" if self.redis is not None else "file"


class DecodeConfig(_Model):
    """How the stored session reads, and where the user id (or fields) are in it."""

    format: Literal["none", "django", "php_session", "json", "msgpack", "pickle"]
    path: str | None = None  # dotted; a part ending in '*' matches a key by prefix
    fields: dict[
        Literal[
            "user_name",
            "email_address",
            "first_name",
            "last_name",
            "full_name",
            "phone_number",
            "user_created",
        ],
        str,
    ] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        # ``json`` or ``{json: {path: user_id}}``: the format is the mapping's one key.
        if isinstance(value, str):
            return {"format": value}
        if isinstance(value, dict) and len(value) == 1 and "format" not in value:
            ((name, options),) = value.items()
            return {"format": name, **(options if isinstance(options, dict) else {})}
        return value


class UsersConfig(_Model):
    framework: Framework | None = None
    key: KeySpec
    database: str | None = None
    secret: SecretStr | None = None
    secret_file: Path | None = None
    # Secrets the application still accepts after a rotation, newest first.
    previous_secrets: list[SecretStr] = Field(default_factory=list)
    previous_secrets_file: Path | None = None
    store: StoreConfig | None = None
    decode: DecodeConfig | None = None
    query: str | None = None
    cache_ttl: float = Field(default=300.0, ge=0)
    negative_ttl: float = Field(default=30.0, ge=0)
    cache_size: int = Field(default=200_000, ge=0)
    timeout: float = Field(default=5.0, gt=0)
    unresolved: Literal["drop", "anonymous"] = "drop"

    @field_validator("query")
    @classmethod
    def _binds_key(cls, value: str | None) -> str | None:
        if value is not None and not re.search(r"(?<!:):(key|user_id)\b", value):
            raise ValueError(
                "the query must use the bound parameter :key (or :user_id after a store or "
                "decoder; never format values in)"
            )
        return value

    @field_validator("previous_secrets", mode="before")
    @classmethod
    def _previous_list(cls, value: Any) -> Any:
        # One string is a comma-separated list, as Laravel's APP_PREVIOUS_KEYS is
        # (``previous_secrets: ${APP_PREVIOUS_KEYS:-}``); empty entries are no secret.
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            stripped = (v.strip() if isinstance(v, str) else v for v in value)
            return [v for v in stripped if v != ""]
        return value

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("framework"), str):
            # Imported here: users/ imports this module.
            from tirreno_shipper.users.presets import apply_preset

            return apply_preset(value)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> UsersConfig:
        if self.secret_file is not None:
            if self.secret is not None:
                raise ValueError("set one of secret or secret_file")
            try:
                text = self.secret_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"secret_file: cannot read {self.secret_file}: {exc.strerror}"
                ) from None
            object.__setattr__(self, "secret", SecretStr(text))  # frozen: set while validating
        self._read_previous_secrets()
        needs_secret = any(isinstance(s, Unseal) for s in self.key.steps()) or (
            self.decode is not None and self.decode.format == "django"
        )
        if needs_secret and (self.secret is None or not self.secret.get_secret_value()):
            raise ValueError(
                "this key or decoder needs the application's secret: set secret: ${VAR} "
                "or secret_file: PATH"
            )
        one_step = self.store is None and self.decode is None
        if one_step:
            if self.query is None:
                raise ValueError(
                    "set framework (a preset), or query binding :key, or store and decode"
                )
            if not re.search(r"(?<!:):key\b", self.query):
                raise ValueError(
                    "the query must use the bound parameter :key (never format values in)"
                )
        elif self.query is not None and not re.search(r"(?<!:):user_id\b", self.query):
            raise ValueError("with a store or decode, the query binds :user_id (the decoded id)")
        sql = self.query is not None or (self.store is not None and self.store.kind == "sql")
        if sql and not self.database:
            raise ValueError("database: an SQLAlchemy URL is needed for the SQL store or query")
        return self

    def _read_previous_secrets(self) -> None:
        if self.previous_secrets_file is not None:
            if self.previous_secrets:
                raise ValueError("set one of previous_secrets or previous_secrets_file")
            try:
                text = self.previous_secrets_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(
                    f"previous_secrets_file: cannot read {self.previous_secrets_file}: "
                    f"{exc.strerror}"
                ) from None
            lines = [SecretStr(line.strip()) for line in text.splitlines() if line.strip()]
            object.__setattr__(self, "previous_secrets", lines)  # frozen: set while validating
        if self.previous_secrets and not self.secret_text():
            raise ValueError(
                "previous_secrets are tried after the current secret: set secret (or "
                "secret_file) too"
            )

    def secret_text(self) -> str:
        """The application's secret (``secret`` or ``secret_file``); empty when unset."""
        return "" if self.secret is None else self.secret.get_secret_value()

    def previous_secret_texts(self) -> tuple[str, ...]:
        """The secrets the application still accepts after a rotation, in order."""
        return tuple(s.get_secret_value() for s in self.previous_secrets)

    def secret_texts(self) -> tuple[str, ...]:
        """The current secret, then the previous ones; empty when there is none."""
        current = self.secret_text()
        return (current, *self.previous_secret_texts()) if current else ()


class ClientIpConfig(_Model):
    # Take the right-most X-Forwarded-For address that is not a trusted proxy.
    # Requires the format to log the header ($http_x_forwarded_for / %{X-Forwarded-For}i).
    forwarded_for: bool = False
    trusted_proxies: list[Network] = Field(
        default_factory=lambda: [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ]
    )


class ExcludeConfig(_Model):
    paths: list[Regex] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE_PATHS))
    user_agents: list[Regex] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE_USER_AGENTS))
    statuses: list[Status] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=lambda: ["OPTIONS", "HEAD"])


class Rule(_Model):
    type: EventType
    method: str | list[str] | None = None
    path: Regex | None = None
    query: bool | None = None  # True: only with a query string; False: only without
    status: Status | list[Status] | None = None
    unresolved: Literal["drop", "anonymous"] | None = None
    # At a status >= 400 tirreno stores page_error whatever the type says:
    # keep_type leaves httpCode out so the type survives; page_error sends it.
    # Unset: account_* types keep theirs (a failed login stays one).
    on_error: Literal["keep_type", "page_error"] | None = None

    def keeps_type(self) -> bool:
        if self.on_error is None:
            return self.type.startswith("account_")
        return self.on_error == "keep_type"

    def methods(self) -> frozenset[str] | None:
        if self.method is None:
            return None
        items = [self.method] if isinstance(self.method, str) else self.method
        return frozenset(m.upper() for m in items)

    def statuses(self) -> tuple[str, ...] | None:
        if self.status is None:
            return None
        items = self.status if isinstance(self.status, list) else [self.status]
        return tuple(str(s).lower() for s in items)


class EventsConfig(_Model):
    exclude: ExcludeConfig = Field(default_factory=ExcludeConfig)
    rules: list[Rule] = Field(default_factory=list)
    redact_query: list[str] = Field(default_factory=lambda: list(DEFAULT_REDACT_QUERY))
    client_ip: ClientIpConfig = Field(default_factory=ClientIpConfig)


class SpoolConfig(_Model):
    max_events: int = Field(default=200_000, ge=1)
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    on_full: Literal["pause", "drop_oldest"] = "pause"
    # With on_full: pause, a full spool first sheds its oldest page views (never
    # account_* or other events) before the tail pauses.
    on_overload: Literal["pause", "shed_page_views"] = "pause"
    lease_timeout: float = Field(default=60.0, gt=0)
    # While live events wait, this share of the sends goes to backfilled events;
    # at least 1 %, so a backfill always progresses.
    backfill_share: float = Field(default=0.05, ge=0.01, le=0.9)


class SiteConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    sensor: SensorConfig
    logs: list[LogSource] = Field(min_length=1)
    users: UsersConfig | None = None
    events: EventsConfig = Field(default_factory=EventsConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)

    @model_validator(mode="after")
    def _lease_outlives_a_request(self) -> SiteConfig:
        # A sender stops a batch when the next request could outlast the lease
        # (a request: a connect and a response, each up to sensor.timeout). With a
        # shorter lease it could never send, and an expired lease lets another
        # worker send the same event. Left unset, the lease follows a long timeout.
        floor = 2 * self.sensor.timeout
        if "lease_timeout" not in self.spool.model_fields_set:
            if self.spool.lease_timeout <= floor:
                spool = self.spool.model_copy(update={"lease_timeout": 3 * self.sensor.timeout})
                object.__setattr__(self, "spool", spool)  # frozen: set once, while validating
            return self
        if self.spool.lease_timeout <= floor:
            raise ValueError(
                f"spool.lease_timeout ({self.spool.lease_timeout:g} s) must be more than "
                f"twice sensor.timeout ({self.sensor.timeout:g} s): an event's lease must "
                "outlive a request, or another worker sends it again"
            )
        return self


class Config(_Model):
    state_dir: Path = Path("/var/lib/tirreno-shipper")
    log: LogConfig = Field(default_factory=LogConfig)
    metrics: MetricsConfig | None = None
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    shutdown_grace: float = Field(default=10.0, ge=0)
    once_timeout: float = Field(default=300.0, gt=0)
    # Reload when the file changes (a ConfigMap update), as on SIGHUP.
    reload_on_change: bool = True
    sites: list[SiteConfig] = Field(min_length=1)

    def site(self, name: str) -> SiteConfig:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)


# --- loading -----------------------------------------------------------------

_ENV_RE = re.compile(r"\$(\$)?\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, path: str, env: Mapping[str, str], problems: list[str]) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(1):  # "$${X}" is an escaped literal "${X}"
            return m.group(0)[1:]
        name, default = m.group(2), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        problems.append(
            f"{path}: environment variable {name} is not set "
            f"(export it, or write ${{{name}:-default}})"
        )
        return ""

    return _ENV_RE.sub(repl, value)


# What a secret whose ${VAR} is not set stands in for when the command does not
# use secrets (`status`, `dead-letters`): valid, and useless for anything else.
_SECRET_STAND_INS = {
    "api_key": "not-loaded",
    "database": "sqlite://",
    "password": "",
    "secret": "not-loaded",
    "previous_secrets": "",
}


def _walk(
    node: Any,
    path: str,
    env: Mapping[str, str],
    problems: list[str],
    no_secrets: frozenset[str] = frozenset(),
) -> Any:
    if isinstance(node, str):
        # A list's items are its key's: previous_secrets[1] is a previous_secrets.
        key = re.sub(r"\[\d+\]$", "", path.rpartition(".")[2])
        if key in no_secrets:
            missing: list[str] = []
            value = _expand(node, path, env, missing)
            return _SECRET_STAND_INS[key] if missing else value
        return _expand(node, path, env, problems)
    if isinstance(node, dict):
        return {
            k: _walk(v, f"{path}.{k}" if path else str(k), env, problems, no_secrets)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_walk(v, f"{path}[{i}]", env, problems, no_secrets) for i, v in enumerate(node)]
    return node


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        # pydantic names union members in the path ("str", "NginxFormat"): noise for a user
        elif part in {"str", "NginxFormat", "ApacheFormat", "JsonFormat", "int", "list[...]"} or (
            part.startswith(("function-", "list[", "literal["))
        ):
            continue
        else:
            out += f".{part}" if out else part
    return out


def _model_for(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model holding the key at ``loc`` (``sites[0].sensor.x`` → `SensorConfig`)."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fld = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if fld is None:
            return None
        nxt = _field_model(fld.annotation)
        if nxt is None:
            return None
        model = nxt
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_model(ann: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, in a list, or optional), if it holds one."""
    found = None
    for cand in [ann, *getattr(ann, "__args__", ())]:
        for inner in [cand, *getattr(cand, "__args__", ())]:
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                found = inner
    return found


def _annotation_at(loc: tuple[int | str, ...]) -> Any:
    """The annotation of the field at ``loc`` (``sites[0].sensor`` → `SensorConfig`)."""
    model = _model_for(loc)
    fld = model.model_fields.get(str(loc[-1])) if model and loc else None
    return fld.annotation if fld is not None else None


def _belongs_under(model: type[BaseModel], key: str) -> list[str]:
    """The fields of ``model`` whose own model has ``key``: where a mis-indented key goes."""
    return [
        name
        for name, fld in model.model_fields.items()
        if (sub := _field_model(fld.annotation)) is not None and key in sub.model_fields
    ]


# The user info of any URL in a text (to the last "@" before a blank or a quote,
# so that a password holding "@" is masked whole) and credential query values.
_URL_USERINFO_RE = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"]*@")
_URL_SECRET_PARAM_RE = re.compile(
    r"(?P<key>[?&;](?:" + "|".join(sorted(CREDENTIAL_QUERY_KEYS)) + r")=)[^&;#\s'\"]*",
    re.IGNORECASE,
)


def scrub_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it masked (``user:pw@``, ``?password=``)."""
    if "://" not in text:
        return text
    text = _URL_USERINFO_RE.sub(r"\g<scheme>***@", text)
    return _URL_SECRET_PARAM_RE.sub(r"\g<key>***", text)


# SQLAlchemy's own reading of a URL's user info (``sqlalchemy.engine.url``): the
# user name up to a ":" or "/", the password up to the FIRST "@".
_SA_USERINFO_RE = re.compile(r"[^:/]*(?::[^@]*)?@")


def database_url_problem(database: str) -> str | None:
    """Why ``users.database`` would be misread with its credentials shown, or ``None``.

    SQLAlchemy ends the password at the first "@": in
    ``mysql+pymysql://reader:p@ss@db/shop`` the host becomes ``ss@db``, and every
    connection error then prints the rest of the password as a host name. Such a
    URL leaves an "@" after the user info, in the host, the path or a query
    parameter's name (never in a correct URL: a database name with "@" is written
    %40). The message shows no part of the URL.
    """
    _scheme, sep, rest = database.partition("://")
    if not sep or rest.startswith("/"):  # no host part (sqlite:///path): no credentials
        return None
    m = _SA_USERINFO_RE.match(rest)
    after = rest[m.end() :] if m else rest
    before_query, _, query = after.partition("?")
    if "@" in before_query or any("@" in p.partition("=")[0] for p in query.split("&")):
        return (
            "the user name or password holds '@', ':' or '/', which must be percent-encoded "
            "in the URL ('@' as %40, ':' as %3A, '/' as %2F); as written, part of the password "
            "would be read as the host name and shown in errors (the URL is not shown here)"
        )
    return None


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = _loc_to_path(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_for(loc)
        known = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        homes = _belongs_under(model, str(loc[-1])) if model else []
        if homes:
            # ``sensor:`` with ``url:`` written at its own level: an indentation slip.
            hint = f"; it is a key of {' or '.join(repr(h) for h in homes)}: indent it under it"
        return (
            f"{path}: unknown key{hint} (known: {', '.join(known)})"
            if known
            else f"{path}: unknown key"
        )
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in ("model_type", "dict_type") and err.get("input") is None:
        model = _field_model(_annotation_at(loc))
        keys = f" ({', '.join(sorted(model.model_fields))})" if model else ""
        return f"{path}: is empty: its keys{keys} go below it, indented"
    if kind == "list_type" and isinstance(err.get("input"), dict) and loc == ("sites",):
        return f"{path}: must be a list: start each site with '- name: ...'"
    msg = str(err["msg"]).removeprefix("Value error, ")
    secret = any(str(p) in SECRET_KEYS for p in loc)
    if kind == "literal_error":
        return f"{path}: {msg}"
    if not secret and "input" in err and isinstance(err["input"], str | int | float | bool):
        # A URL with credentials in a wrong place (``users: mysql://u:pw@db``) is masked.
        got = scrub_urls(repr(err["input"]))
        return f"{path}: {msg} (got {got})"
    return f"{path}: {msg}"


def _read_key_files(data: Any, problems: list[str]) -> None:
    """Replace each ``sensor.api_key_file`` by the key it holds, in place.

    The model then sees ``api_key`` only. A file that cannot be read is left in
    place (and reported), as is one given beside an ``api_key``, so that the
    model's "exactly one of" rule still reports that mistake.
    """
    if not isinstance(data, dict) or not isinstance(data.get("sites"), list):
        return
    for i, site in enumerate(data["sites"]):
        sensor = site.get("sensor") if isinstance(site, dict) else None
        if not isinstance(sensor, dict) or not sensor.get("api_key_file"):
            continue
        keyfile = Path(str(sensor["api_key_file"]))
        try:
            key = keyfile.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(
                f"sites[{i}].sensor.api_key_file: cannot read {keyfile}: {exc.strerror} "
                "(check the path and that the service user may read it)"
            )
            continue
        if not key:
            problems.append(f"sites[{i}].sensor.api_key_file: {keyfile} is empty")
            continue
        if sensor.get("api_key") is None:
            sensor["api_key"] = key
            del sensor["api_key_file"]


def _semantic_checks(data: Any) -> list[str]:
    """Checks beyond the models' types, run on the raw data so that they are
    reported together with the type errors of other keys, not after they are fixed."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    sites = data.get("sites") if isinstance(data, dict) else None
    for i, site in enumerate(sites if isinstance(sites, list) else []):
        if not isinstance(site, dict):
            continue
        name = site.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    f"sites[{i}].name: duplicate site name {name!r} (also sites[{seen[name]}])"
                )
            seen.setdefault(name, i)
        users = site.get("users")
        cookie = _users_cookie(users)
        logs = site.get("logs")
        for j, raw_src in enumerate(logs if isinstance(logs, list) else []):
            try:
                src = LogSource.model_validate(raw_src)
            except ValidationError:
                continue  # already reported by the whole model's validation
            if cookie is not None and (problem := cookie_log_problem(cookie, src.format)):
                problems.append(f"sites[{i}].logs[{j}].format: {problem}")
                continue
            try:
                compile_format(src.format, cookie_name=cookie)
            except FormatError as exc:
                problems.append(f"sites[{i}].logs[{j}].format: {exc}")
        database = users.get("database") if isinstance(users, dict) else None
        if isinstance(database, str):
            problem = database_url_problem(database)
            if problem is not None:
                problems.append(f"sites[{i}].users.database: {problem}")
                continue  # the last check of a site
            try:
                from sqlalchemy.engine import make_url

                make_url(database)
            except Exception:
                problems.append(
                    f"sites[{i}].users.database: not an SQLAlchemy URL "
                    "(e.g. postgresql+psycopg://reader@db/shop, mysql+pymysql://..., sqlite:///path)"
                )
    return problems


def _users_cookie(users: Any) -> str | None:
    """The session cookie's name a raw ``users`` section gives, its preset's if unset."""
    if not isinstance(users, dict):
        return None
    key = users.get("key")
    cookie = key.get("cookie") if isinstance(key, dict) else None
    if (
        cookie is None
        and isinstance(users.get("framework"), str)
        and not (isinstance(key, dict) and (key.get("field") or key.get("header")))
    ):
        from tirreno_shipper.users.presets import PRESETS  # users/ imports this module

        preset = PRESETS.get(users["framework"])
        cookie = preset["key"].get("cookie") if preset is not None else None
    return cookie if isinstance(cookie, str) else None


def cookie_log_problem(cookie: str, spec: object) -> str | None:
    """Why a log format cannot carry ``cookie`` by its name, and what to log instead.

    nginx's ``$cookie_NAME`` ends at the first character outside ``[A-Za-z0-9_]``:
    ``$cookie_connect.sid`` logs ``$cookie_connect`` then ``.sid``. A name pattern
    (``wordpress_logged_in_*``) is no variable at all, in nginx or Apache.
    """
    header = (
        f'log the whole Cookie header instead (nginx "$http_cookie", Apache '
        f'"%{{Cookie}}i"): the shipper picks {cookie} out of it'
    )
    if "*" in cookie and spec in {"nginx_cookie", "apache_cookie"}:
        return f"the cookie name {cookie} is a pattern, which {spec} cannot log; {header}"
    if NGINX_COOKIE_NAME.match(cookie):
        return None
    valid = re.match(r"[A-Za-z0-9_]*", cookie)
    head = valid.group(0) if valid else ""
    if spec == "nginx_cookie" or (
        isinstance(spec, NginxFormat) and f"$cookie_{head}".lower() in spec.nginx.lower()
    ):
        return (
            f"nginx cannot log the cookie {cookie} as $cookie_{cookie} (a variable name ends "
            f"at the first character outside A-Za-z0-9_, so nginx writes $cookie_{head} "
            f"followed by {cookie[len(head) :]!r}); {header}"
        )
    return None


def _skip_key_files(data: Any) -> None:
    """``api_key_file`` → a stand-in ``api_key``, unread (see ``parse_config(no_secrets=)``)."""
    if not isinstance(data, dict):
        return
    for site in _list(data.get("sites")):
        sensor = site.get("sensor") if isinstance(site, dict) else None
        if isinstance(sensor, dict) and sensor.get("api_key_file") and "api_key" not in sensor:
            del sensor["api_key_file"]
            sensor["api_key"] = _SECRET_STAND_INS["api_key"]


def _list(value: Any) -> list[Any]:
    """``value`` if it is a list; anything else is the models' to report (``sites: true``)."""
    return value if isinstance(value, list) else []


def _relative_to(base: Path, data: Any) -> None:
    """Make relative paths relative to the configuration file's folder, in place.

    Operators run the daemon from anywhere (systemd's working directory is /);
    a path in a config file naturally means "next to this file".
    """

    def fix(value: Any) -> Any:
        if (
            isinstance(value, str)
            and value
            and not os.path.isabs(value)
            and not value.startswith("~")
        ):
            return str(base / value)
        return value

    if not isinstance(data, dict):
        return
    if "state_dir" in data:
        data["state_dir"] = fix(data["state_dir"])
    for site in _list(data.get("sites")):
        if not isinstance(site, dict):
            continue
        for src in _list(site.get("logs")):
            if isinstance(src, dict) and "path" in src:
                src["path"] = fix(src["path"])
        sensor = site.get("sensor")
        if isinstance(sensor, dict):
            for key in ("api_key_file", "ca_bundle"):
                if sensor.get(key):
                    sensor[key] = fix(sensor[key])
        users = site.get("users")
        if isinstance(users, dict) and isinstance(users.get("database"), str):
            db = users["database"]
            m = re.match(r"^(sqlite(?:\+\w+)?:///)(?!/)(.+)$", db)
            if m and not m.group(2).startswith(":memory:"):
                users["database"] = m.group(1) + str(base / m.group(2))


# A configuration is a few KiB. These bound what a hostile or broken file can cost
# to read: aliases that expand to millions of values (a 415-byte "billion laughs"
# took check past 100 s), or a huge file (50 MB took minutes and GBs).
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_VALUES = 100_000  # scalars, lists and mappings, with every alias expanded


class _ExpansionTooLarge(Exception):
    pass


def _load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing documents whose aliases expand past `MAX_CONFIG_VALUES`.

    The node graph is composed first (aliases are shared nodes, so this stays as
    small as the text) and its expanded size counted once per node, before anything
    walks the expanded tree: that walk, not the parse, is what an alias bomb makes
    exponential.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def size(n: yaml.Node) -> int:
            known = sizes.get(id(n))
            if known is not None:
                if known < 0:
                    raise _ExpansionTooLarge  # an alias to its own ancestor: infinite
                return known
            sizes[id(n)] = -1
            total = 1
            if isinstance(n, yaml.SequenceNode):
                total += sum(size(child) for child in n.value)
            elif isinstance(n, yaml.MappingNode):
                total += sum(size(k) + size(v) for k, v in n.value)
            if total > MAX_CONFIG_VALUES:
                raise _ExpansionTooLarge
            sizes[id(n)] = total
            return total

        size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_config(
    text: str,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
    base_dir: Path | None = None,
    *,
    no_secrets: bool | frozenset[str] = False,
) -> Config:
    """Validate YAML text into a `Config`; raise `ConfigError` with every problem.

    ``no_secrets``: for commands that never use the secrets (``status``,
    ``dead-letters``: True), or some of them (``backfill`` never sends:
    ``{"api_key"}``), a secret whose ``${VAR}`` is not set is no problem: an
    operator's shell rarely has the service's environment file loaded.
    """
    unused = SECRET_KEYS if no_secrets is True else frozenset(no_secrets or ())
    env = os.environ if env is None else env
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [f"{source}: {len(text)} characters; a configuration may hold at most "
             f"{MAX_CONFIG_BYTES} (is this the right file?)"]
        )  # fmt: skip
    try:
        raw = _load_yaml(text)
    except RecursionError:
        raise ConfigError([f"{source}: its YAML is nested too deeply"]) from None
    except _ExpansionTooLarge:
        raise ConfigError(
            [f"{source}: its YAML aliases (*name) expand to more than {MAX_CONFIG_VALUES} "
             "values, or refer to themselves; write the values out, or use fewer levels of "
             "aliases"]
        ) from None  # fmt: skip
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        lines = text.splitlines()
        line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
        # YAML reads a value starting with '*' as a reference to an anchor.
        hint = (
            "; a value starting with '*' (a glob) must be quoted: path: '*.log'"
            if re.search(r"[:-]\s+\*", line)
            else ""
        )
        raise ConfigError([f"{source}: not valid YAML{where}: {problem}{hint}"]) from None
    if raw is None:
        raise ConfigError([f"{source}: the file is empty; see config.example.yaml"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping with state_dir, sites, ..."])
    problems: list[str] = []
    data = _walk(raw, "", env, problems, unused)
    if base_dir is not None:
        _relative_to(base_dir, data)
    if "api_key" in unused:
        _skip_key_files(data)
    else:
        _read_key_files(data, problems)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # A key whose ${VAR} is missing was already reported; that the empty
        # text left in its place is invalid too would only repeat it.
        # One problem per key, too: a value a union refuses (``status: 30x``, a
        # status or a list of them) fails each branch, and the first says why.
        reported = {p.partition(": ")[0] for p in problems}
        for described in map(_describe, exc.errors()):
            key = described.partition(": ")[0]
            if key not in reported:
                reported.add(key)
                problems.append(described)
        problems.extend(_semantic_checks(data))
        raise ConfigError(problems) from None
    problems.extend(_semantic_checks(data))
    if problems:
        raise ConfigError(problems)
    return config


def load_config(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    *,
    no_secrets: bool | frozenset[str] = False,
) -> Config:
    """Read and validate a configuration file; raise `ConfigError`."""
    try:
        with open(path, "rb") as fh:
            # One byte more than allowed tells a file that is too large without
            # reading it all (it may be /dev/zero, or a log named by mistake).
            content = fh.read(MAX_CONFIG_BYTES + 1)
        if len(content) > MAX_CONFIG_BYTES:
            raise ConfigError(
                [f"{path}: larger than {MAX_CONFIG_BYTES} bytes, the most a configuration "
                 "may hold (is this the right file?)"]
            )  # fmt: skip
        text = content.decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    return parse_config(
        text, env, source=str(path), base_dir=Path(path).resolve().parent, no_secrets=no_secrets
    )
