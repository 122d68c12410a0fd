"""Configuration: every mistake at once, with its key path and a hint; secrets never shown."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tirreno_shipper import cli
from tirreno_shipper.config import Config, load_config, parse_config
from tirreno_shipper.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

VALID = """
state_dir: /tmp/tirreno-shipper-test-state
sites:
  - name: shop
    sensor: {url: "http://127.0.0.1:8585/sensor/", api_key: k}
    logs:
      - {path: /var/log/nginx/access.log, format: nginx_combined}
"""


def problems_of(text: str, env: dict[str, str] | None = None, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env or {}, **kw)  # type: ignore[arg-type]
    return info.value.problems


def one(problems: list[str], prefix: str) -> str:
    found = [p for p in problems if p.startswith(prefix)]
    assert len(found) == 1, f"expected one problem at {prefix!r} in {problems}"
    return found[0]


def test_valid_minimal_config_loads_with_defaults() -> None:
    """A minimal config loads into a frozen model with documented defaults."""
    config = parse_config(VALID, env={})
    assert isinstance(config, Config)
    site = config.site("shop")
    assert site.sensor.key() == "k"
    assert site.logs[0].start_at == "end"
    assert site.logs[0].max_line_bytes == 65536
    assert site.events.exclude.methods == ["OPTIONS", "HEAD"]
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        site.name = "other"


BROKEN = """
state_dir: /tmp/x
sits: 1
sites:
  - name: shop
    sensor:
      url: http://127.0.0.1/sensor/
      api_key: supersecretkey123
      rate_limt: 3
      timeout: abc
    logs:
      - {path: /tmp/a.log, format: nginx_cokie}
      - {path: /tmp/b.log, format: {apache: '%h %Z %>s'}}
      - {path: /tmp/c.log, format: {nginx: '${NOPE} $remote_addr'}}
    users:
      key: {cookie: sid}
      database: postgresql://reader:hunter2pass@db/shop
      query: SELECT username AS user_name FROM s WHERE k = :key
    events:
      exclude: {paths: ['(unclosed']}
      rules: [{type: account_loginn, path: '^/login'}]
  - name: shop
    sensor: {url: "http://127.0.0.1/sensor/", api_key_file: /nonexistent/shop.key}
    logs: [{path: /tmp/d.log}]
"""


def test_every_mistake_is_reported_at_once() -> None:
    """Unknown keys, types, regexes, presets, directives, eventTypes, env vars, key files
    and duplicate names are all reported in one error, each with its key path."""
    problems = problems_of(BROKEN)
    assert "did you mean 'sites'" in one(problems, "sits:")
    assert "did you mean 'rate_limit'" in one(problems, "sites[0].sensor.rate_limt:")
    assert "valid number" in one(problems, "sites[0].sensor.timeout:")
    assert "invalid regular expression" in one(problems, "sites[0].events.exclude.paths[0]:")
    eventtype = one(problems, "sites[0].events.rules[0].type:")
    assert "account_login" in eventtype and "account_loginn" not in eventtype.split(":", 1)[0]
    preset = one(problems, "sites[0].logs[0].format:")
    assert "unknown preset 'nginx_cokie'" in preset and "did you mean 'nginx_cookie'" in preset
    assert "'%Z'" in one(problems, "sites[0].logs[1].format:")
    env = one(problems, "sites[0].logs[2].format.nginx:")
    assert "NOPE is not set" in env and "${NOPE:-default}" in env
    keyfile = one(problems, "sites[1].sensor.api_key_file:")
    assert "/nonexistent/shop.key" in keyfile and "cannot read" in keyfile
    assert "duplicate site name 'shop'" in one(problems, "sites[1].name:")
    assert len(problems) == 10, problems


def test_bad_regex_in_rule_path_names_the_rule() -> None:
    """A rule's broken path regex is reported at the rule's own key path."""
    text = VALID + "    events:\n      rules: [{type: page_view, path: '['}]\n"
    assert "invalid regular expression" in one(problems_of(text), "sites[0].events.rules[0].path:")


def test_unknown_apache_directive_alone_is_reported() -> None:
    """A LogFormat with an unknown directive fails even when everything else is valid."""
    text = VALID.replace("format: nginx_combined", "format: {apache: '%h %t \"%r\" %>s %Q'}")
    assert "%Q" in one(problems_of(text), "sites[0].logs[0].format:")


def test_cookie_preset_without_cookie_name_says_what_to_set() -> None:
    """nginx_cookie needs users.key.cookie; the hint names it."""
    text = VALID.replace("nginx_combined", "nginx_cookie")
    assert "users.key.cookie" in one(problems_of(text), "sites[0].logs[0].format:")


def test_env_expansion_default_and_literal() -> None:
    """${VAR} and ${VAR:-default} expand; $${X} stays a literal ${X}; lower-case is nginx's."""
    text = """
state_dir: ${STATE:-/tmp/fallback}
sites:
  - name: ${SITE}
    sensor: {url: "${URL:-http://127.0.0.1:1/sensor/}", api_key: "${KEY}"}
    logs:
      - path: /var/log/$${LITERAL}/a.log
        format: {nginx: '$remote_addr ${remote_user} [$time_local] "$request" $status'}
"""
    config = parse_config(text, env={"SITE": "blog", "KEY": "s3cr3t", "URL": ""})
    assert config.state_dir == Path("/tmp/fallback")
    site = config.sites[0]
    assert site.name == "blog"
    assert site.sensor.key() == "s3cr3t"
    assert site.sensor.url == "http://127.0.0.1:1/sensor/"  # empty counts as unset
    assert site.logs[0].path == "/var/log/${LITERAL}/a.log"
    fmt = site.logs[0].format
    assert getattr(fmt, "nginx", "").startswith("$remote_addr ${remote_user}")


def test_missing_env_var_is_reported_with_path() -> None:
    """A ${VAR} that is not set is a problem at the key that uses it."""
    text = VALID.replace("api_key: k", "api_key: '${TIRRENO_API_KEY}'")
    assert "TIRRENO_API_KEY is not set" in one(problems_of(text), "sites[0].sensor.api_key:")


def test_api_key_file_is_read_and_unreadable_one_reported(tmp_path: Path) -> None:
    """api_key_file's content becomes the key; an unreadable file is a problem."""
    keyfile = tmp_path / "shop.key"
    keyfile.write_text("from-file-key\n")
    text = VALID.replace("api_key: k", f"api_key_file: {keyfile}")
    assert parse_config(text, env={}).sites[0].sensor.key() == "from-file-key"
    keyfile.chmod(0)
    if os.geteuid() == 0:
        # root reads any file: make it unreadable another way, a directory.
        keyfile.chmod(0o600)
        keyfile.unlink()
        keyfile.mkdir()
    assert "cannot read" in one(problems_of(text), "sites[0].sensor.api_key_file:")


def test_api_key_and_key_file_are_exclusive() -> None:
    """Exactly one of api_key and api_key_file."""
    text = VALID.replace("api_key: k", "url2: x").replace("url2: x", "")
    problems = problems_of(text)
    assert any("exactly one of api_key" in p for p in problems), problems


def test_api_key_blanks_around_it_are_stripped() -> None:
    """A key from an env file with a newline or blanks around it is the key itself."""
    text = VALID.replace("api_key: k", 'api_key: "${K}"')
    for raw in ("s3cret-key\n", "  s3cret-key\t"):
        assert parse_config(text, env={"K": raw}).sites[0].sensor.key() == "s3cret-key"


@pytest.mark.parametrize("raw", ["two words-SECRET", "tab\tin-SECRET", "k\u00e9y-SECRET", " "])
def test_api_key_a_header_cannot_carry_is_refused_without_showing_it(raw: str) -> None:
    """Inner blanks, control or non-ASCII characters: a config error, not an endless
    'network' retry when httpx refuses the header; the key is never printed."""
    text = VALID.replace("api_key: k", 'api_key: "${K}"')
    problem = one(problems_of(text, env={"K": raw}), "sites[0].sensor.api_key")
    assert "SECRET" not in problem
    assert ("empty" if raw == " " else "cannot carry") in problem


def test_a_log_path_that_is_a_folder_is_refused_with_the_fix(tmp_path: Path) -> None:
    """The tail reads regular files only: a folder would be watched and never read."""
    text = VALID.replace("/var/log/nginx/access.log", str(tmp_path))
    problem = one(problems_of(text), "sites[0].logs[0].path")
    assert f"{tmp_path} is a folder" in problem and f"{tmp_path}/access.log" in problem
    # A glob is a pattern, not a folder, even when the folder exists.
    assert parse_config(text.replace(str(tmp_path), f"{tmp_path}/*.log"), env={})


def test_no_secrets_mode_tolerates_unset_secrets_only(tmp_path: Path) -> None:
    """For status and dead-letters: an unset ${VAR} in a secret (or an unreadable key file)
    is no problem and stands in for nothing usable; anywhere else it still is one."""
    text = VALID.replace("api_key: k", 'api_key: "${KEY}"').replace(
        "logs:",
        'users: {key: {cookie: s}, database: "postgresql+psycopg://r:${PW}@db/shop", '
        "query: 'SELECT u AS user_name FROM t WHERE k = :key'}\n    logs:",
    )
    assert len(problems_of(text)) == 2  # KEY and PW
    site = parse_config(text, env={}, no_secrets=True).sites[0]
    assert site.sensor.key() == "not-loaded"
    assert site.users is not None and site.users.database == "sqlite://"
    keyfile = tmp_path / "k"  # does not exist
    assert (
        parse_config(
            VALID.replace("api_key: k", f"api_key_file: {keyfile}"), env={}, no_secrets=True
        )
        .sites[0]
        .sensor.key()
        == "not-loaded"
    )
    # A rotated-out secret is one too (status reads no cookie).
    rotated = _with_rotation('previous_secrets: ["${OLD}"]')
    users = parse_config(rotated, env={}, no_secrets=True).sites[0].users
    assert users is not None and users.previous_secret_texts() == ()
    elsewhere = VALID.replace("sites:", 'state_dir: "${STATE}"\nsites:')
    with pytest.raises(ConfigError, match="STATE is not set"):
        parse_config(elsewhere, env={}, no_secrets=True)


def _with_rotation(rotation: str) -> str:
    """VALID with a Django users section whose secret rotated (``rotation``: its keys)."""
    return VALID.replace(
        "logs:",
        "users:\n      framework: django\n      database: sqlite://\n"
        '      secret: "${SECRET_KEY}"\n'
        + "".join(f"      {line}\n" for line in rotation.splitlines())
        + "    logs:",
    )


def test_previous_secrets_from_env_list_string_or_file(tmp_path: Path) -> None:
    """previous_secrets: a list, a comma-separated string (APP_PREVIOUS_KEYS), or a file."""

    def previous(text: str, **env: str) -> tuple[str, ...]:
        users = parse_config(text, env={"SECRET_KEY": "now", **env}).sites[0].users
        assert users is not None
        return users.previous_secret_texts()

    listed = _with_rotation('previous_secrets: ["${OLD1}", "${OLD2}"]')
    assert previous(listed, OLD1="a", OLD2="b") == ("a", "b")
    fallbacks = _with_rotation('previous_secrets: "${APP_PREVIOUS_KEYS:-}"')
    assert previous(fallbacks, APP_PREVIOUS_KEYS="base64:b2xk, base64:b2xkZXI=") == (
        "base64:b2xk",
        "base64:b2xkZXI=",
    )
    assert previous(fallbacks) == ()  # unset: no rotation
    keyfile = tmp_path / "previous"
    keyfile.write_text("first-old\n\n  second-old  \n")
    assert previous(_with_rotation(f"previous_secrets_file: {keyfile}")) == (
        "first-old",
        "second-old",
    )
    assert previous(_with_rotation("")) == ()


def test_previous_secrets_mistakes_are_reported_without_the_secrets(tmp_path: Path) -> None:
    """Both forms, no current secret, an unreadable file: each said, no secret shown."""
    keyfile = tmp_path / "previous"
    keyfile.write_text("FILEDOLDSECRET\n")
    env = {"SECRET_KEY": "now", "OLD": "ENVOLDSECRET"}
    both = _with_rotation(f'previous_secrets: ["${{OLD}}"]\nprevious_secrets_file: {keyfile}')
    alone = _with_rotation('previous_secrets: ["${OLD}"]').replace('secret: "${SECRET_KEY}"', "")
    missing = _with_rotation(f"previous_secrets_file: {tmp_path}/nope")
    wrong_type = _with_rotation("previous_secrets: [{ENVOLDSECRET: 1}]")
    problems = [p for text in (both, alone, missing, wrong_type) for p in problems_of(text, env)]
    assert "set one of previous_secrets or previous_secrets_file" in problems[0]
    assert "set secret (or secret_file) too" in problems[1]
    assert "previous_secrets_file: cannot read" in problems[2]
    assert problems[3].startswith("sites[0].users.previous_secrets[0]")
    assert not any("OLDSECRET" in p for p in problems), problems


def test_empty_and_non_mapping_and_bad_yaml() -> None:
    """Empty text, a list at the top and YAML syntax errors are ConfigErrors."""
    assert "empty" in problems_of("")[0]
    assert "mapping" in problems_of("- a\n- b\n")[0]
    assert "not valid YAML at line" in problems_of("sites: [\n  {a: 1\n")[0]
    assert "quoted" not in problems_of("sites: [\n  {a: 1\n")[0]
    # An unquoted glob is a YAML alias: the message says to quote it.
    for glob_value in ("*.log", "*access"):
        [problem] = problems_of(f"sites:\n  - logs:\n      - path: {glob_value}\n")
        assert problem.endswith("a value starting with '*' (a glob) must be quoted: path: '*.log'")


def test_secrets_never_printed_even_when_the_error_is_about_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An api_key value and a DB password never appear in errors, even errors on those keys."""
    config = tmp_path / "c.yaml"
    config.write_text(
        """
state_dir: ./state
sites:
  - name: shop
    sensor: {url: "http://127.0.0.1/sensor/", api_key: [SUPERSECRETAPIKEY]}
    logs: [{path: a.log, format: nginx_cookie}]
    users:
      key: {cookie: sid}
      database: {url: "postgresql://reader:HUNTER2PASSWORD@db/shop"}
      query: SELECT 1 WHERE x = :key
  - name: blog
    sensor: {url: "http://127.0.0.1/sensor/", api_key: OTHERSECRETKEY, timeout: -1}
    logs: [{path: b.log}]
    users:
      key: {cookie: sid}
      database: "not a url HUNTER3PASSWORD"
      query: SELECT 1 WHERE x = :key
"""
    )
    code = cli.main(["run", "-c", str(config), "--once", "--dry-run"])
    out = capsys.readouterr()
    assert code == 78
    text = out.out + out.err
    assert "sites[0].sensor.api_key" in text
    assert "sites[0].users.database" in text
    assert "sites[1].users.database" in text
    for secret in ("SUPERSECRETAPIKEY", "HUNTER2PASSWORD", "HUNTER3PASSWORD", "OTHERSECRETKEY"):
        assert secret not in text


def _with_database(database: str, users_extra: str = "") -> str:
    return VALID + (
        "    users:\n      key: {cookie: sid}\n"
        f"      database: '{database}'\n"
        "      query: SELECT 1 AS user_name WHERE k = :key\n" + users_extra
    )


@pytest.mark.parametrize(
    ("database", "shown"),
    [
        # SQLAlchemy ends the password at the first "@": "ss-Zz9Leak@127.0.0.1" became the host.
        ("mysql+pymysql://reader:p@ss-Zz9Leak@127.0.0.1/test", ("reader", "ss-Zz9Leak")),
        ("mysql+pymysql://reader:p@ss-Zz9Leak@127.0.0.1:3306/test", ("reader", "ss-Zz9Leak")),
        ("postgresql+psycopg://reader:p@ss/Zz9Leak@db/shop", ("reader", "Zz9Leak")),
        ("postgresql+psycopg://reader:p@ss?Zz9Leak@db/shop", ("reader", "Zz9Leak")),
        ("postgresql+psycopg://rdr/Zz9Leak:pw@db/shop", ("rdr", "Zz9Leak")),
    ],
)
def test_a_database_password_with_an_unescaped_at_is_refused_without_showing_it(
    database: str, shown: tuple[str, ...]
) -> None:
    """A user name or password holding "@" (or "/", ":") must be percent-encoded: the
    problem says so and shows no part of the URL's credentials."""
    problems = problems_of(_with_database(database))
    problem = one(problems, "sites[0].users.database: ")
    assert "%40" in problem and "percent-encoded" in problem
    text = "\n".join(problems)
    for part in shown:
        assert part not in text


@pytest.mark.parametrize(
    "database",
    [
        "mysql+pymysql://reader:p%40ss-Zz9@127.0.0.1/test",
        "postgresql+psycopg://reader:p/ss@db/shop",
        "postgresql+psycopg://reader@db/shop?application_name=me@host",
        # SQLAlchemy reads a user name up to its last "@": read right, nothing leaks.
        "postgresql+psycopg://reader@corp:pw@db/shop",
        "postgresql+psycopg:///shop?host=/run/postgresql",
        "sqlite:////srv/app@2/users.sqlite",
    ],
)
def test_urls_with_an_at_where_it_belongs_are_accepted(database: str) -> None:
    """Percent-encoded credentials, "@" in a query value or in a SQLite path are fine."""
    config = parse_config(_with_database(database), env={})
    assert config.sites[0].users is not None


def test_a_misplaced_database_url_is_not_echoed_with_its_credentials() -> None:
    """``users:`` given the URL itself (a mapping was expected): the error shows what it got,
    with the URL's user info and credential parameters masked."""
    text = VALID + (
        "    users: 'mysql+pymysql://reader:Zz9PwLeak@db/shop?Token=Zz9TokLeak&charset=utf8'\n"
    )
    problems = problems_of(text)
    problem = one(problems, "sites[0].users: ")
    assert "mysql+pymysql://***@db/shop" in problem and "charset=utf8" in problem
    joined = "\n".join(problems)
    for secret in ("Zz9PwLeak", "Zz9TokLeak", "reader"):
        assert secret not in joined


def test_secret_from_env_not_echoed_in_type_error() -> None:
    """A secret key's value is not echoed when it fails a check of its own."""
    text = VALID.replace("api_key: k", "api_key: 12345678901234")
    problems = problems_of(text)
    assert any(p.startswith("sites[0].sensor.api_key") for p in problems)
    assert "12345678901234" not in "\n".join(problems)


def test_cli_exits_78_and_lists_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with a bad config exits 78 (EX_CONFIG) and prints every problem."""
    config = tmp_path / "bad.yaml"
    config.write_text(BROKEN)
    assert cli.main(["run", "-c", str(config), "--once", "--dry-run"]) == 78
    err = capsys.readouterr().err
    assert "invalid configuration (10 problem(s))" in err
    assert "sites[1].name: duplicate site name" in err
    assert "supersecretkey123" not in err and "hunter2pass" not in err


def test_cli_missing_config_file_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config path that does not exist is a configuration error too."""
    assert cli.main(["run", "-c", str(tmp_path / "nope.yaml"), "--dry-run"]) == 78
    assert "cannot read the configuration" in capsys.readouterr().err


def test_relative_paths_resolve_against_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log paths, state_dir, key files and sqlite URLs are relative to the config's folder."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "shop.key").write_text("kk")
    (folder / "c.yaml").write_text(
        """
state_dir: ./state
sites:
  - name: shop
    sensor: {url: "http://127.0.0.1/sensor/", api_key_file: shop.key}
    logs: [{path: logs/*.log, format: nginx_cookie}]
    users:
      key: {cookie: sid}
      database: sqlite:///db/users.sqlite
      query: SELECT 1 WHERE x = :key
"""
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config("../etc/c.yaml")
    site = config.sites[0]
    assert config.state_dir == folder.resolve() / "state"
    assert site.logs[0].path == str(folder.resolve() / "logs/*.log")
    assert site.sensor.key() == "kk"
    assert site.users is not None
    assert site.users.database == f"sqlite:///{folder.resolve() / 'db/users.sqlite'}"


def test_absolute_and_memory_paths_untouched(tmp_path: Path) -> None:
    """Absolute paths and sqlite :memory: stay as written."""
    text = VALID.replace("format: nginx_combined", "format: nginx_cookie") + (
        "    users:\n      key: {cookie: sid}\n      database: 'sqlite:///:memory:'\n"
        "      query: SELECT 1 WHERE x = :key\n"
    )
    config = parse_config(text, env={}, base_dir=tmp_path)
    assert config.sites[0].logs[0].path == "/var/log/nginx/access.log"
    assert config.sites[0].users is not None
    assert config.sites[0].users.database == "sqlite:///:memory:"


def test_query_must_bind_key() -> None:
    """A user query without :key is refused (values are never formatted into SQL)."""
    text = VALID.replace("format: nginx_combined", "format: nginx_cookie") + (
        "    users:\n      key: {cookie: sid}\n      database: 'sqlite:///u.db'\n"
        "      query: SELECT 1 WHERE x = '%s'\n"
    )
    assert ":key" in one(problems_of(text), "sites[0].users.query:")


def test_status_and_network_validation() -> None:
    """Status specs are codes or classes; trusted proxies are networks."""
    text = VALID + (
        "    events:\n      exclude: {statuses: [404, 2xx, 7xx]}\n"
        "      client_ip: {forwarded_for: true, trusted_proxies: [10.0.0.0/8, not-a-net]}\n"
    )
    problems = problems_of(text)
    assert "2xx" in one(problems, "sites[0].events.exclude.statuses[2]:")
    assert "IP network" in one(problems, "sites[0].events.client_ip.trusted_proxies[1]:")


def test_example_config_loads() -> None:
    """config.example.yaml at the repo root loads, with its paths next to it."""
    config = load_config(REPO / "config.example.yaml", env={})
    site = config.site("shop")
    assert site.logs[0].path == str(REPO / "examples" / "access.log")
    assert site.users is not None and site.users.key.cookie == "sessionid"
    assert [r.type for r in site.events.rules][:3] == [
        "account_login",
        "account_login_fail",
        "account_logout",
    ]


def test_example_config_copied_elsewhere_still_finds_its_files(tmp_path: Path) -> None:
    """Copied with its examples folder, the example config points into the copy."""
    shutil.copy(REPO / "config.example.yaml", tmp_path / "c.yaml")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    config = load_config(tmp_path / "c.yaml", env={})
    assert Path(config.sites[0].logs[0].path).is_file()
    assert config.state_dir == tmp_path.resolve() / "state"


@pytest.mark.parametrize(
    "text",
    [
        "sites: true",
        "sites: 5",
        "sites: [{name: a, logs: 7, sensor: {url: 'http://x/', api_key: k}}]",
        "sites: [{name: a, logs: [{path: 3}], sensor: 1}]",
        "sites: [7]\nstate_dir: [1]",
    ],
)
def test_wrong_shapes_are_config_errors(text: str) -> None:
    """Scalars where lists or mappings belong are reported, never a TypeError."""
    assert problems_of(text)


def test_indentation_slips_are_named_as_such() -> None:
    """``sensor:`` left empty with its keys at the site's level, and ``sites:`` written as
    one mapping: the messages say where the keys go, not pydantic's type names."""
    problems = problems_of(
        "sites:\n  - name: a\n    sensor:\n    url: http://127.0.0.1/sensor/\n    api_key: k\n"
        "    logs: [{path: /tmp/a.log}]\n"
    )
    assert problems[0].startswith("sites[0].sensor: is empty: its keys (api_key, api_key_file,")
    assert problems[0].endswith("go below it, indented")
    assert problems[1].startswith(
        "sites[0].url: unknown key; it is a key of 'sensor': indent it under it (known: "
    )
    assert not any("SensorConfig" in p for p in problems)
    assert problems_of("sites:\n  name: a\n") == [
        "sites: must be a list: start each site with '- name: ...'"
    ]


def test_a_value_every_branch_of_a_union_refuses_is_one_problem() -> None:
    """``status: 30x`` (a status, or a list of them): said once, by the status branch."""
    problems = problems_of(
        "sites:\n  - name: a\n    sensor: {url: 'http://127.0.0.1/sensor/', api_key: k}\n"
        "    logs: [{path: /tmp/a.log}]\n"
        "    events: {rules: [{path: '^/x', status: 30x, type: page_view}]}\n"
    )
    assert problems == [
        "sites[0].events.rules[0].status: a status is a code like 404 or a class like "
        "2xx, 3xx, 4xx, 5xx (got '30x')"
    ]


def test_a_lease_shorter_than_two_request_timeouts_is_refused() -> None:
    """A request could outlast such a lease, and another worker send the event again."""
    [problem] = problems_of(
        "sites:\n  - name: a\n    sensor: {url: 'http://127.0.0.1/sensor/', api_key: k, "
        "timeout: 10}\n    logs: [{path: /tmp/a.log}]\n    spool: {lease_timeout: 20}\n"
    )
    assert problem.startswith(
        "sites[0]: spool.lease_timeout (20 s) must be more than twice sensor.timeout (10 s)"
    )
    # Left unset, the lease follows a long timeout instead.
    config = parse_config(
        "sites:\n  - name: a\n    sensor: {url: 'http://127.0.0.1/sensor/', api_key: k, "
        "timeout: 30}\n    logs: [{path: /tmp/a.log}]\n",
        env={},
    )
    assert config.sites[0].spool.lease_timeout == 90
