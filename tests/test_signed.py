"""users/signed.py against cookies recorded from the real frameworks (tests/fixtures/frameworks).

Each fixture holds the throwaway secret, the cookie as the browser sent it back (as nginx
logs it) and what the framework itself stored; the module must find the same session,
and must turn away a tampered cookie and one sealed with another secret.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tirreno_shipper.users.signed import (
    SCHEMES,
    CookieRejected,
    django_session_loads,
    unseal,
    unsealer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks"
OTHER_SECRET = "another-applications-secret-entirely-0123456789"
OTHER_APP_KEY = "base64:" + base64.b64encode(b"another-32-byte-laravel-app-key!").decode()


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / f"{name}.json").read_text())
    return data


DJANGO = fixture("django")
FLASK = fixture("flask")
EXPRESS = fixture("express")
LARAVEL = fixture("laravel")
RAILS = fixture("rails")
# Rails 8's authentication generator: recorded (rails_auth.json) and derived from Rails'
# source (rails8.json); see their README.
RAILS_AUTH = fixture("rails_auth")
RAILS8 = json.loads((FIXTURES / "rails_auth" / "rails8.json").read_text())


def _session(framework: dict[str, Any], engine_suffix: str) -> dict[str, Any]:
    sessions: list[dict[str, Any]] = framework["sessions"]
    (found,) = [
        s
        for s in sessions
        if s.get("session_engine", s.get("session_interface", "")).endswith(engine_suffix)
    ]
    return found


DJANGO_SIGNED = _session(DJANGO, "signed_cookies")
DJANGO_DB = _session(DJANGO, ".db")
FLASK_COOKIE = _session(FLASK, "SecureCookieSessionInterface")


class Case:
    """One recorded cookie: how to unseal it and what must come out."""

    def __init__(
        self,
        name: str,
        scheme: str,
        cookie: str,
        secret: str,
        other_secret: str,
        expect: Callable[[str], None],
        **options: str,
    ) -> None:
        self.name, self.scheme, self.cookie = name, scheme, cookie
        self.secret, self.other_secret = secret, other_secret
        self.expect, self.options = expect, options

    def __repr__(self) -> str:
        return self.name


def _json_user(key: str, user_id: object) -> Callable[[str], None]:
    def check(inner: str) -> None:
        assert json.loads(inner)[key] == user_id

    return check


def _equals(expected: object) -> Callable[[str], None]:
    def check(inner: str) -> None:
        assert inner == str(expected)

    return check


CASES = [
    Case(
        "django-signed_cookies",
        "django",
        DJANGO_SIGNED["cookie"],
        DJANGO["secret_key"],
        OTHER_SECRET,
        _json_user("_auth_user_id", str(DJANGO["user"]["id"])),
    ),
    Case(
        "django-set_signed_cookie",
        "django",
        DJANGO_DB["signed_cookie"]["cookie"],
        DJANGO["secret_key"],
        OTHER_SECRET,
        _equals(DJANGO_DB["signed_cookie"]["value"]),
        cookie_name=DJANGO_DB["signed_cookie"]["cookie_name"],
        salt=DJANGO_DB["signed_cookie"]["set_signed_cookie_salt"],
        format="signed_cookie",
    ),
    Case(
        "flask-session-signed-id",
        "itsdangerous",
        FLASK["signed_session_id"]["cookie"],
        FLASK["secret_key"],
        OTHER_SECRET,
        _equals(FLASK["signed_session_id"]["session_id"]),
        salt=FLASK["signed_session_id"]["salt"],
        format="value",
    ),
    Case(
        "flask-session",
        "itsdangerous",
        FLASK_COOKIE["cookie"],
        FLASK["secret_key"],
        OTHER_SECRET,
        _json_user("_user_id", FLASK["user"]["id"]),
    ),
    *[
        Case(
            f"express-{s['store']}",
            "express",
            s["cookie"],
            EXPRESS["secret"],
            OTHER_SECRET,
            _equals(s["sid"]),
        )
        for s in EXPRESS["sessions"]
    ],
    *[
        Case(
            f"laravel-{s['driver']}",
            "laravel",
            s["cookie"],
            LARAVEL["app_key"],
            OTHER_APP_KEY,
            _equals(s["session_id"]),
        )
        for s in LARAVEL["sessions"]
    ],
    *[
        Case(
            f"rails-{c['jar']}-{rec['key_generator_hash_digest_class'].rsplit(':', 1)[1]}",
            "rails",
            c["cookie"],
            RAILS["secret_key_base"],
            OTHER_SECRET * 3,
            _json_user("user_id", RAILS["user"]["id"]) if c["jar"] == "encrypted" else _equals(11),
            cookie_name=c["cookie_name"],
            **({"mode": "signed"} if c["jar"] == "signed" else {}),
        )
        for rec in RAILS["recordings"]
        for c in rec["cookies"]
    ],
    *[
        Case(
            name,
            "rails",
            cookie,
            RAILS_AUTH["secret_key_base"],
            OTHER_SECRET * 3,
            _equals(session_id),
            mode="signed",
            cookie_name="session_id",
        )
        for name, cookie, session_id in [
            *[
                (
                    f"rails-auth-recorded-{login['email_address'].partition('@')[0]}",
                    login["cookie"],
                    login["session_row_id"],
                )
                for login in RAILS_AUTH["logins"]
            ],
            *[
                (f"rails8-derived-{vector['name']}", vector["cookie"], vector["value"])
                for vector in RAILS8["vectors"]
            ],
        ]
    ],
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_recorded_cookie_unseals_to_the_recorded_session(case: Case) -> None:
    case.expect(unseal(case.scheme, case.cookie, case.secret, **case.options))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_cookie_sealed_with_another_secret_is_forged(case: Case) -> None:
    with pytest.raises(CookieRejected) as rejected:
        unseal(case.scheme, case.cookie, case.other_secret, **case.options)
    assert rejected.value.reason == "forged"
    # Neither secret nor cookie ever reaches a message (they end up in logs).
    assert case.secret not in str(rejected.value)
    assert case.cookie not in str(rejected.value)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_cookie_sealed_with_a_previous_secret_still_unseals(case: Case) -> None:
    # The application rotated its secret and still accepts the old one: so do we.
    open_ = unsealer(case.scheme, case.other_secret, previous=[case.secret], **case.options)
    case.expect(open_(case.cookie))
    with pytest.raises(CookieRejected) as rejected:
        unsealer(case.scheme, case.other_secret, previous=[case.other_secret], **case.options)(
            case.cookie
        )
    assert rejected.value.reason == "forged"


def _flip(text: str, index: int) -> str:
    """Change one character to another of the same base64/hex alphabet."""
    char = text[index]
    if char.isdigit():
        replacement = "1" if char == "0" else "0"
    elif char.islower():
        replacement = "b" if char == "a" else "a"
    else:
        replacement = "B" if char == "A" else "A"
    return text[:index] + replacement + text[index + 1 :]


def _alnum_positions(text: str) -> list[int]:
    return [i for i, c in enumerate(text) if c.isalnum()]


def _tamper_payload(case: Case) -> str:
    """The attacker's edit: the signed or encrypted part changed, the signature kept."""
    cookie = case.cookie
    if case.scheme == "laravel":
        # Re-encoded so that it is still well-formed: only the MAC can tell.
        payload = json.loads(base64.b64decode(cookie.replace("%3D", "=")))
        payload["value"] = _flip(payload["value"], 5)
        return base64.b64encode(json.dumps(payload).encode()).decode()
    if case.scheme == "express":
        # Another session id of the same length under the same signature.
        return _flip(cookie, len("s%3A") + 1)
    # Django, itsdangerous, Rails: the first characters are the payload.
    return _flip(cookie, _alnum_positions(cookie)[3])


def _tamper_signature(case: Case) -> str:
    cookie = case.cookie
    if case.scheme == "laravel":
        payload = json.loads(base64.b64decode(cookie.replace("%3D", "=")))
        payload["mac"] = _flip(payload["mac"], 0)
        return base64.b64encode(json.dumps(payload).encode()).decode()
    # Not the last character: before base64 padding its low bits are not decoded.
    return _flip(cookie, _alnum_positions(cookie.removesuffix("%3D%3D").removesuffix("%3D"))[-4])


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("tamper", [_tamper_payload, _tamper_signature], ids=["payload", "sig"])
def test_tampered_cookie_is_forged(case: Case, tamper: Callable[[Case], str]) -> None:
    tampered = tamper(case)
    assert tampered != case.cookie
    with pytest.raises(CookieRejected) as rejected:
        unseal(case.scheme, tampered, case.secret, **case.options)
    assert rejected.value.reason == "forged"


def test_express_session_id_swapped_under_the_same_signature_is_forged() -> None:
    first, second = EXPRESS["sessions"]
    swapped = "s%3A" + second["sid"] + "." + first["cookie"].rsplit(".", 1)[1]
    with pytest.raises(CookieRejected) as rejected:
        unseal("express", swapped, EXPRESS["secret"])
    assert rejected.value.reason == "forged"


def test_express_unsigned_cookie_is_not_a_session() -> None:
    # express-session ignores a connect.sid without "s:": nobody.
    with pytest.raises(CookieRejected) as rejected:
        unseal("express", EXPRESS["sessions"][0]["sid"], EXPRESS["secret"])
    assert rejected.value.reason == "forged"


def test_express_cookie_decoded_by_nginx_or_not_is_the_same() -> None:
    s = EXPRESS["sessions"][0]
    decoded = "s:" + s["cookie"][len("s%3A") :].replace("%2F", "/").replace("%2B", "+")
    assert unseal("express", decoded, EXPRESS["secret"]) == s["sid"]


def test_django_signed_cookie_with_the_pre_5_2_salt_is_accepted_as_django_does() -> None:
    recorded = DJANGO_DB["signed_cookie"]
    value = unseal(
        "django",
        recorded["legacy_cookie"],
        DJANGO["secret_key"],
        format="signed_cookie",
        cookie_name="remember",
        salt="remember-me",
    )
    assert value == recorded["value"]
    with pytest.raises(CookieRejected):  # the salt binds the cookie's name
        unseal(
            "django",
            recorded["legacy_cookie"],
            DJANGO["secret_key"],
            format="signed_cookie",
            cookie_name="other",
            salt="remember-me",
        )


def test_django_session_data_row_decodes_to_the_user() -> None:
    row = DJANGO_DB["django_session_row"]
    data = django_session_loads(row["session_data"], DJANGO["secret_key"])
    assert data["_auth_user_id"] == str(DJANGO["user"]["id"])
    # Django compressed it: the "." that marks zlib is there.
    assert row["session_data"].startswith(".")


def test_django_session_data_under_another_secret_is_forged() -> None:
    row = DJANGO_DB["django_session_row"]
    with pytest.raises(CookieRejected) as rejected:
        django_session_loads(row["session_data"], OTHER_SECRET)
    assert rejected.value.reason == "forged"


def test_django_session_data_is_not_a_signed_cookie() -> None:
    # Same SECRET_KEY, another salt: a db row cannot be replayed as a signed_cookies
    # session, nor the other way round.
    row = DJANGO_DB["django_session_row"]
    with pytest.raises(CookieRejected) as rejected:
        unseal("django", row["session_data"], DJANGO["secret_key"])
    assert rejected.value.reason == "forged"
    with pytest.raises(CookieRejected):
        django_session_loads(DJANGO_SIGNED["cookie"], DJANGO["secret_key"])


def test_laravel_cookie_for_another_cookie_name_is_forged() -> None:
    # EncryptCookies' prefix binds the value to its cookie: the XSRF-TOKEN cookie (also
    # encrypted with APP_KEY) cannot be passed off as laravel_session.
    s = LARAVEL["sessions"][0]
    with pytest.raises(CookieRejected) as rejected:
        unseal("laravel", s["cookie"], LARAVEL["app_key"], cookie_name="XSRF-TOKEN")
    assert rejected.value.reason == "forged"


def test_rails_cookie_for_another_purpose_is_forged() -> None:
    cookie = RAILS["recordings"][0]["cookies"][0]["cookie"]
    with pytest.raises(CookieRejected) as rejected:
        unseal("rails", cookie, RAILS["secret_key_base"], cookie_name="remember_token")
    assert rejected.value.reason == "forged"


def test_rails_key_digest_can_be_pinned() -> None:
    sha1, sha256 = (rec["cookies"][0]["cookie"] for rec in RAILS["recordings"])
    secret = RAILS["secret_key_base"]
    assert json.loads(unseal("rails", sha1, secret, key_digest="sha1"))["user_id"] == 3
    assert json.loads(unseal("rails", sha256, secret, key_digest="sha256"))["user_id"] == 3
    with pytest.raises(CookieRejected):
        unseal("rails", sha1, secret, key_digest="sha256")


def test_rails_cookie_without_purpose_is_read_under_any_name() -> None:
    """As Rails' second read: an envelope with "pur": null (Rails 5.2's defaults)."""
    secret = RAILS["secret_key_base"]
    envelope = {"_rails": {"message": base64.b64encode(b"11").decode(), "exp": None, "pur": None}}
    data = base64.b64encode(json.dumps(envelope).encode())
    cookie = data.decode() + "--" + _hmac_sha1_hex(_rails_signed_key(secret), data)
    assert unseal("rails", cookie, secret, mode="signed", cookie_name="session_id") == "11"


def test_rails8_derivation_reproduces_the_recorded_cookie() -> None:
    """The Rails 8 format read from Rails' source gives, byte for byte, what Rails wrote."""
    (derived,) = [v for v in RAILS8["vectors"] if v["value"] == 1 and v["digest"] == "sha1"]
    assert derived["cookie"] == RAILS_AUTH["logins"][0]["cookie"]


def test_rails_signed_digest_can_be_pinned() -> None:
    """digest: auto tells SHA1 from SHA256 by length; a pinned digest takes only its own."""
    secret = RAILS8["secret_key_base"]
    by_digest = {v["digest"]: v["cookie"] for v in RAILS8["vectors"] if v["value"] == 1}
    for name, cookie in by_digest.items():
        assert unseal("rails", cookie, secret, mode="signed", digest=name) == "1"
    with pytest.raises(CookieRejected) as rejected:
        unseal("rails", by_digest["sha256"], secret, mode="signed", digest="sha1")
    assert rejected.value.reason == "forged"


@pytest.mark.parametrize(
    ("serialized", "says"),
    [
        # Marshal of 11, as Rails 6.1 writes without the JSON serializer (or :hybrid's
        # cookies from before the switch): no JSON, and nothing this module reads.
        (b"\x04\x08i\x10", "cookies_serializer is :marshal or :hybrid"),
        # ActiveSupport::MessagePack: its signature (128 packed), then 11.
        (b"\xcc\x80\x0b", "cookies_serializer is :message_pack"),
    ],
    ids=["marshal", "message_pack"],
)
def test_rails_cookie_of_another_serializer_is_undecodable_and_says_why(
    serialized: bytes, says: str
) -> None:
    secret = RAILS["secret_key_base"]
    verify_key = _rails_signed_key(secret)
    # Bare (pre-6.0 cookies) and inside the metadata envelope Rails 6-8 writes.
    envelope = {"_rails": {"message": base64.b64encode(serialized).decode(), "exp": None}}
    for message in (serialized, json.dumps(envelope).encode()):
        data = base64.b64encode(message)
        cookie = data.decode() + "--" + _hmac_sha1_hex(verify_key, data)
        with pytest.raises(CookieRejected) as rejected:
            unseal("rails", cookie, secret, mode="signed", key_digest="sha1")
        assert rejected.value.reason == "undecodable"
        assert says in rejected.value.detail and "set it to :json" in rejected.value.detail


def _rails_signed_key(secret: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    return PBKDF2HMAC(
        algorithm=hashes.SHA1(), length=64, salt=b"signed cookie", iterations=1000
    ).derive(secret.encode())


def _hmac_sha1_hex(key: bytes, data: bytes) -> str:
    from cryptography.hazmat.primitives import hashes, hmac

    h = hmac.HMAC(key, hashes.SHA1())
    h.update(data)
    return h.finalize().hex()


@pytest.mark.parametrize(
    ("scheme", "value"),
    [
        ("django", "no-signature-here"),
        ("itsdangerous", "no-signature-here"),
        ("laravel", "not base64 ☃"),
        ("laravel", base64.b64encode(b'{"iv": 1}').decode()),
        ("laravel", base64.b64encode(b"[1, 2]").decode()),
        ("rails", "a--b"),
        ("rails", "!!--!!--!!"),
        ("laravel", base64.b64encode(b"[" * 3000).decode()),
        ("express", "s:no-dot"),
        ("express", "%E9%ZZ"),
    ],
)
def test_junk_is_undecodable(scheme: str, value: str) -> None:
    secret = LARAVEL["app_key"] if scheme == "laravel" else OTHER_SECRET
    with pytest.raises(CookieRejected) as rejected:
        unseal(scheme, value, secret)
    assert rejected.value.reason == "undecodable"


@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), value=st.text(max_size=300))
def test_any_visitor_value_is_rejected_never_an_error(scheme: str, value: str) -> None:
    # A visitor controls the cookie: whatever it sends, the outcome is a CookieRejected
    # (counted, the line moves on), never another exception that would pause the site.
    secret = LARAVEL["app_key"] if scheme == "laravel" else OTHER_SECRET
    with pytest.raises(CookieRejected):
        unseal(scheme, value, secret)


_B64 = st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())
_SHAPED = st.one_of(
    _B64,  # Laravel's outer layer
    st.recursive(
        st.none() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(["iv", "value", "mac", "tag", "x"]), inner, max_size=5
            )
        ),
    ).map(lambda v: base64.b64encode(json.dumps(v).encode()).decode()),
    st.lists(_B64, min_size=1, max_size=4).map("--".join),  # Rails' data--iv--tag
    st.lists(st.text(max_size=30), min_size=1, max_size=4).map(":".join),  # Django
    st.lists(st.text(max_size=30), min_size=1, max_size=4).map(".".join),  # itsdangerous
    st.text(max_size=60).map(lambda t: "s:" + t),  # express
)


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), value=_SHAPED)
def test_values_shaped_like_each_scheme_are_rejected_never_an_error(
    scheme: str, value: str
) -> None:
    secret = LARAVEL["app_key"] if scheme == "laravel" else OTHER_SECRET
    with pytest.raises(CookieRejected):
        unseal(scheme, value, secret)


@pytest.mark.parametrize(
    ("scheme", "secret", "options", "message"),
    [
        ("tomcat", "s", {}, "unknown scheme"),
        ("django", "", {}, "secret is empty"),
        ("express", "s", {"previous": ("",)}, "secret is empty"),
        ("express", "s", {"previous": "old-secret"}, "a list of secrets"),
        ("django", "s", {"algorithm": "md4"}, "unknown hash"),
        ("django", "s", {"format": "signed_cookie"}, "needs cookie_name"),
        ("laravel", "base64:c2hvcnQ=", {}, "APP_KEY is 5 bytes"),
        ("laravel", "base64:not base64!", {}, "not base64"),
        ("laravel", LARAVEL["app_key"], {"cipher": "des"}, "cipher"),
        ("rails", "s", {"iterations": "many"}, "iterations"),
        ("rails", "s", {"colour": "red"}, "unknown option"),
        ("itsdangerous", "s", {"key_derivation": "pbkdf9"}, "key_derivation"),
    ],
)
def test_configuration_errors_are_value_errors_without_the_secret(
    scheme: str, secret: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as error:
        unsealer(scheme, secret, **options)
    if len(secret) > 8:
        assert secret not in str(error.value)


def test_unsealer_is_reusable_and_laravel_gcm_is_supported() -> None:
    # An AES-256-GCM Laravel cookie (config app.cipher), sealed here as Laravel's
    # Encrypter does: no MAC, the GCM tag in "tag".
    import os

    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = base64.b64decode(LARAVEL["app_key"].removeprefix("base64:"))
    h = hmac.HMAC(key, hashes.SHA1())
    h.update(b"laravel_sessionv2")
    plain = h.finalize().hex().encode() + b"|the-session-id"
    iv = os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, plain, None)
    payload = {
        "iv": base64.b64encode(iv).decode(),
        "value": base64.b64encode(sealed[:-16]).decode(),
        "mac": "",
        "tag": base64.b64encode(sealed[-16:]).decode(),
    }
    cookie = base64.b64encode(json.dumps(payload).encode()).decode()
    open_ = unsealer("laravel", LARAVEL["app_key"], cipher="aes-256-gcm")
    assert open_(cookie) == "the-session-id"
    assert open_(cookie) == "the-session-id"
    payload["value"] = _flip(payload["value"], 2)
    with pytest.raises(CookieRejected) as rejected:
        open_(base64.b64encode(json.dumps(payload).encode()).decode())
    assert rejected.value.reason == "forged"
