"""Framework presets: ``users.framework`` → the cookie, key chain, store, decoder and
queries of the framework's defaults, each overridable key by key.

A preset is plain data merged under what the operator wrote, before the model is
validated: anything given wins, a store kind given without its template (``store:
{redis: {url: ...}}``) takes the preset's template and decoder for that kind.
This module imports nothing from the package, so that `config` can call it.

Facts come from the frameworks' own defaults (and the recordings in
``tests/fixtures/frameworks/``):

- Django: ``sessionid``; ``django_session.session_data`` is signed (and often
  zlib-compressed) JSON; the cache backend keeps a pickled dict under
  ``:1:django.contrib.sessions.cache<key>``; ``_auth_user_id`` names the user.
- Laravel: ``laravel_session`` is encrypted with ``APP_KEY`` and holds the id of a
  ``sessions`` row, whose ``user_id`` column names the user (file and Redis
  drivers keep ``serialize()``d attributes with a ``login_web_<sha1>`` key).
- Rails: the cookie store keeps the whole session in the encrypted cookie
  (``_APPNAME_session``); ``session[:user_id]`` names the user (Devise's warden
  keeps ``[[id], salt]`` under ``warden.user.user.key`` instead).
- Rails 8's authentication generator (``rails_auth``): the signed cookie
  ``session_id`` holds the id of a ``sessions`` row (``user_id``, ``ip_address``,
  ``user_agent``, timestamps), whose ``users`` row has ``email_address``.
- Express: ``connect.sid`` is ``s:<sid>.<hmac>``, URL-encoded; connect-pg-simple
  keeps JSON in ``session.sess``, connect-redis under ``sess:<sid>``;
  passport keeps ``passport.user``.
- Flask: ``session`` is an itsdangerous-signed cookie; Flask-Login keeps
  ``_user_id``; Flask-Session keeps msgpack under ``session:<sid>``.
- PHP: ``PHPSESSID``; files ``sess_<id>`` in PHP's session format; the redis
  handler uses ``PHPREDIS_SESSION:<id>``. Which key holds the user is the
  application's choice (``user_id`` here).
- WordPress: ``wordpress_logged_in_<md5 of the site URL>`` is
  ``login|expiration|token|hmac``; the session is ``sha256(token)`` in the user's
  ``session_tokens`` meta, so a forged login name with no live token finds nobody.
- Spring Session JDBC: ``SESSION`` is the base64 of the id; ``PRINCIPAL_NAME`` is
  a column of ``SPRING_SESSION``.
"""

from __future__ import annotations

import copy
from typing import Any

_DJANGO_USER = (
    "SELECT username AS user_name, email AS email_address, first_name, last_name, "
    "date_joined AS user_created FROM auth_user WHERE id = :user_id"
)
_EMAIL_USERS = (
    "SELECT email AS user_name, email AS email_address, created_at AS user_created "
    "FROM users WHERE id = :user_id"
)

# In a preset's unseal step, ``cookie_name: COOKIE`` binds the step to the cookie the key
# is read from (the operator's ``key.cookie`` when given): Laravel's prefix and Rails'
# purpose name the cookie, so a renamed cookie would otherwise never verify.
COOKIE = "{cookie}"

# framework → {"key": ..., "store": {kind: template}, "decode": {kind|"none": decode},
#              "query": ..., "store_default": kind | None}
PRESETS: dict[str, dict[str, Any]] = {
    "django": {
        "key": {"cookie": "sessionid"},
        "store_default": "sql",
        "store": {
            "sql": "SELECT session_data FROM django_session WHERE session_key = :key",
            "redis": {"key": ":1:django.contrib.sessions.cache{key}"},
        },
        "decode": {
            "sql": {"django": {"path": "_auth_user_id"}},
            "redis": {"pickle": {"path": "_auth_user_id"}},
        },
        "query": _DJANGO_USER,
    },
    "laravel": {
        "key": {
            "cookie": "laravel_session",
            "transforms": ["url_decode", {"unseal": "laravel", "cookie_name": COOKIE}],
        },
        "store_default": "sql",
        "store": {
            "sql": "SELECT user_id FROM sessions WHERE id = :key",
            "redis": {"key": "laravel_database_laravel_cache:{key}"},
        },
        "decode": {
            "sql": "none",
            "redis": {"php_session": {"path": "login_web_*"}},
            "file": {"php_session": {"path": "login_web_*"}},
        },
        "query": (
            "SELECT email AS user_name, email AS email_address, name AS full_name, "
            "created_at AS user_created FROM users WHERE id = :user_id"
        ),
    },
    "rails": {
        "key": {"transforms": ["url_decode", {"unseal": "rails", "cookie_name": COOKIE}]},
        "store_default": None,
        "store": {},
        # session[:user_id], as hand-written authentication (and the recording) keeps it;
        # Devise: decode: {json: {path: warden.user.user.key.0.0}}.
        "decode": {"none": {"json": {"path": "user_id"}}},
        "query": _EMAIL_USERS,
        "needs_cookie": "_APPNAME_session (config.session_store key: '_myapp_session')",
    },
    "rails_auth": {
        "key": {
            "cookie": "session_id",
            # cookies.signed: a forged or unsigned session_id finds nobody.
            "transforms": [
                "url_decode",
                {"unseal": "rails", "mode": "signed", "cookie_name": COOKIE},
            ],
        },
        "store_default": None,
        "store": {},
        "decode": {},
        # One statement per key: the session row and its user together.
        "query": (
            "SELECT u.email_address AS user_name, u.email_address AS email_address, "
            "u.created_at AS user_created FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.id = :key"
        ),
    },
    "express": {
        "key": {"cookie": "connect.sid", "transforms": ["url_decode", {"unseal": "express"}]},
        "store_default": "sql",
        "store": {
            "sql": "SELECT sess FROM session WHERE sid = :key",
            "redis": {"key": "sess:{key}"},
        },
        "decode": {
            "sql": {"json": {"path": "passport.user"}},
            "redis": {"json": {"path": "passport.user"}},
        },
        "query": None,
    },
    "flask": {
        "key": {"cookie": "session", "transforms": [{"unseal": "itsdangerous"}]},
        "store_default": None,
        "store": {
            "redis": {"key": "session:{key}"},
            "sql": "SELECT data FROM sessions WHERE session_id = 'session:' || :key",
        },
        "decode": {
            "none": {"json": {"path": "_user_id"}},
            "redis": {"msgpack": {"path": "_user_id"}},
            "sql": {"msgpack": {"path": "_user_id"}},
        },
        "query": None,
        # Flask-Session's id is not signed by default: its chain is empty.
        "store_transforms": [],
    },
    "php": {
        "key": {"cookie": "PHPSESSID"},
        "store_default": "file",
        "store": {
            "file": "/var/lib/php/sessions/sess_{key}",
            "redis": {"key": "PHPREDIS_SESSION:{key}"},
        },
        "decode": {
            "file": {"php_session": {"path": "user_id"}},
            "redis": {"php_session": {"path": "user_id"}},
        },
        "query": None,
    },
    "wordpress": {
        "key": {
            "cookie": "wordpress_logged_in_*",
            "transforms": ["url_decode", {"split": "|", "index": 2}, "sha256"],
        },
        "store_default": "sql",
        "store": {
            # The token's hash is hex (no LIKE wildcard in it); meta_key is indexed.
            "sql": (
                "SELECT user_id FROM wp_usermeta WHERE meta_key = 'session_tokens' "
                "AND meta_value LIKE CONCAT('%\"', :key, '\"%')"
            ),
        },
        "decode": {"sql": "none"},
        "query": (
            "SELECT user_login AS user_name, user_email AS email_address, "
            "display_name AS full_name, user_registered AS user_created "
            "FROM wp_users WHERE ID = :user_id"
        ),
    },
    "spring": {
        "key": {"cookie": "SESSION", "transforms": ["base64_decode"]},
        "store_default": "sql",
        "store": {
            "sql": (
                "SELECT PRINCIPAL_NAME AS user_name FROM SPRING_SESSION WHERE SESSION_ID = :key"
            ),
        },
        "decode": {"sql": "none"},
        "query": None,
    },
}


def _store_kind(store: Any) -> str | None:
    if isinstance(store, dict):
        for kind in ("sql", "redis", "file"):
            if kind in store:
                return kind
    return None


def _preset_store_kind(users: dict[str, Any], preset: dict[str, Any]) -> tuple[Any, Any]:
    """The store kind the preset fills in, and the operator's own store (or None)."""
    given_store = users.get("store")
    if not isinstance(given_store, str):
        kind = _store_kind(given_store) if given_store is not None else preset["store_default"]
        return kind, given_store
    # ``store: redis`` (or sql, file, none): the preset's template of that kind.
    kind = None if given_store == "none" else given_store
    if kind is not None and kind not in preset["store"]:
        raise ValueError(
            f"framework {users['framework']} has no {kind} store template: write "
            f"store: {{{kind}: ...}} in full"
        )
    return kind, None


def _preset_decode(out: dict[str, Any], preset: dict[str, Any], kind: Any) -> None:
    """The preset's decoder for a store of ``kind``, unless the operator named one."""
    decode = preset["decode"].get(kind or "none")
    if decode is not None and decode != "none":
        out["decode"] = copy.deepcopy(decode)
    elif decode == "none" and kind is not None:
        out["decode"] = "none"


def _bind_cookie(transforms: list[Any], cookie: Any) -> list[Any]:
    """The preset's steps with ``cookie_name: COOKIE`` set to the cookie read, or left
    to the scheme's default when the key is no single named cookie."""
    out: list[Any] = []
    for step in transforms:
        if isinstance(step, dict) and step.get("cookie_name") == COOKIE:
            bound = {k: v for k, v in step.items() if k != "cookie_name"}
            if isinstance(cookie, str) and "*" not in cookie:
                bound["cookie_name"] = cookie
            out.append(bound)
        else:
            out.append(step)
    return out


def apply_preset(users: dict[str, Any]) -> dict[str, Any]:
    """``users`` with its framework's defaults filled in where the operator wrote nothing.

    An unknown framework is left for the model to refuse (naming the choices).
    """
    preset = PRESETS.get(str(users.get("framework")))
    if preset is None:
        return users
    out = dict(users)
    kind, given_store = _preset_store_kind(users, preset)
    if isinstance(users.get("store"), str):
        out.pop("store")
    key = copy.deepcopy(preset["key"])
    if kind is not None and "store_transforms" in preset:
        key["transforms"] = list(preset["store_transforms"])
    given_key = users.get("key")
    if isinstance(given_key, dict):
        if any(k in given_key for k in ("cookie", "field", "header")):
            key.pop("cookie", None)
        key.update(given_key)
    if not any(k in key for k in ("cookie", "field", "header")) and "needs_cookie" in preset:
        raise ValueError(
            f"framework {users['framework']}: set key.cookie to {preset['needs_cookie']}"
        )
    if not (isinstance(given_key, dict) and "transforms" in given_key):
        key["transforms"] = _bind_cookie(key.get("transforms", []), key.get("cookie"))
    out["key"] = key
    if kind is not None:
        template = preset["store"].get(kind)
        if given_store is None:
            out["store"] = {kind: copy.deepcopy(template)}
        elif kind == "redis" and isinstance(template, dict):
            redis = given_store.get("redis")
            merged = {**template, **(redis if isinstance(redis, dict) else {})}
            out["store"] = {**given_store, "redis": merged}
    if "decode" not in users:
        _preset_decode(out, preset, kind)
    if "query" not in users and preset["query"] is not None:
        out["query"] = preset["query"]
    if out.get("store") is None:
        out.pop("store", None)
    return out
