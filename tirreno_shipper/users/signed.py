"""Verify and decrypt the session cookies that web frameworks sign or encrypt.

A framework that signs or encrypts its session cookie keeps the session id (or the
whole session) out of reach of anyone without the application's secret, and so of
the shipper until the operator gives it that secret. `unsealer` builds, once per
site, a function that turns the cookie value the way the browser sent it back into
the inner value the framework itself would see:

===============  ====================================================================
scheme           framework, cookie, what `unsealer` returns
===============  ====================================================================
``django``       Django ``signing`` (``SECRET_KEY``): the ``signed_cookies`` session
                 backend's ``sessionid`` (the session as JSON text); with
                 ``format: signed_cookie`` a ``set_signed_cookie`` value (the value)
``itsdangerous`` Flask's default ``session`` cookie (``SECRET_KEY``): the session as
                 JSON text (Flask's tagged JSON); with ``format: value`` a value
                 signed by a plain ``itsdangerous.Signer`` (old Flask-Session ids)
``laravel``      Laravel's ``EncryptCookies`` (``APP_KEY``): ``laravel_session``'s
                 session id (the ``hmac|`` prefix EncryptCookies adds checked and cut)
``rails``        Rails 5.2-8 ``cookies.encrypted`` (``secret_key_base``): the cookie
                 store's ``_APP_session`` as JSON text; with ``mode: signed`` a
                 ``cookies.signed`` value such as Rails 8 auth's ``session_id``
``express``      ``cookie-signature`` as express-session uses it (``secret``): the
                 session id of ``connect.sid`` (``s:<sid>.<hmac>``, URL-encoded)
===============  ====================================================================

A JSON scalar inside a Rails cookie (``123``, ``"abc"``) is returned as plain text,
the id a ``sessions`` table holds; a JSON object is returned as its JSON text. Rails'
cookie jars sign or encrypt with a pass-through serializer, so even Rails 7.1+
(``use_message_serializer_for_metadata``) writes a cookie's metadata in the older,
doubly serialized envelope ``{"_rails": {"message": b64(JSON), "exp", "pur":
"cookie.NAME"}}``; the single one (``"data"``) is read too. A cookie the application
serialized with Marshal or MessagePack (``cookies_serializer``) is ``undecodable``.

Options, all strings (they come from YAML), all optional:

- ``django``: ``format`` (``object`` | ``signed_cookie``), ``salt`` (default
  ``django.contrib.sessions.backends.signed_cookies``; for ``signed_cookie`` the ``salt``
  given to ``set_signed_cookie``, default empty), ``cookie_name`` (``signed_cookie``
  only, required), ``algorithm`` (``sha256``; ``sha1`` before Django 3.1).
- ``itsdangerous``: ``salt`` (``cookie-session``), ``digest`` (``sha1``),
  ``key_derivation`` (``hmac`` | ``django-concat`` | ``concat`` | ``none``),
  ``format`` (``session`` | ``value``).
- ``laravel``: ``cookie_name`` (``laravel_session``; the prefix is an HMAC of it, so
  it must be the name the application set), ``cipher`` (``aes-256-cbc`` |
  ``aes-128-cbc`` | ``aes-256-gcm`` | ``aes-128-gcm``).
- ``rails``: ``mode`` (``encrypted`` | ``signed``), ``cookie_name`` (when given, a
  purpose Rails >= 6 embeds must be ``cookie.NAME``; none at all passes, as in
  Rails), ``salt`` (``authenticated encrypted cookie``, or ``signed cookie`` in signed
  mode), ``key_digest`` (the PBKDF2 hash: ``sha256`` from Rails 7.0's defaults,
  ``sha1`` before; ``auto``, the default, accepts both), ``iterations`` (``1000``),
  ``digest`` (signed mode's HMAC: Rails' ``signed_cookie_digest``, SHA1 unless the
  application set it; ``auto``, the default, tells it from the signature's length).
- ``express``: none.

Expiry (Django's ``max_age``, itsdangerous' timestamp, Rails' ``exp``) is not checked:
a backfill reads lines long after their cookies expired, and the session store says
whether a session is still alive. Everything that authenticates is checked, in
constant time: a signature or MAC that does not match raises ``CookieRejected("forged")``,
a value that is not even shaped like the scheme's ``CookieRejected("undecodable")``.
The secret, the keys and the cookie never appear in an exception's text.

Every primitive (HMAC, PBKDF2, AES-CBC, AES-GCM, constant-time comparison) is the
``cryptography`` library's; this module only arranges them as each framework does.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import urllib.parse
import zlib
from collections.abc import Callable, Sequence
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, padding
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

Reason = Literal["forged", "undecodable"]
Unsealer = Callable[[str], str]
SCHEMES = ("django", "itsdangerous", "laravel", "rails", "express")

# Only a value whose signature verified is decompressed, yet a leaked secret must not
# also become a way to exhaust memory. Real sessions are a few KB.
MAX_DECOMPRESSED = 1 << 20

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class CookieRejected(Exception):
    """The cookie is not one the application issued: it resolves to nobody.

    ``reason`` is ``forged`` (a signature or MAC that does not verify, a prefix or
    purpose for another cookie) or ``undecodable`` (not shaped like the scheme at all).
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


def _forged(detail: str) -> CookieRejected:
    return CookieRejected("forged", detail)


def _undecodable(detail: str) -> CookieRejected:
    return CookieRejected("undecodable", detail)


def _hash(name: str, option: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[name.lower()]()
    except KeyError:
        raise ValueError(f"{option}: unknown hash {name!r} (one of {', '.join(_HASHES)})") from None


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _hmac(key: bytes, algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = crypto_hmac.HMAC(key, algorithm)
    h.update(data)
    return h.finalize()


def _same(a: bytes, b: bytes) -> bool:
    return constant_time.bytes_eq(a, b)


def _b64url_nopad(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64url_decode(data: bytes) -> bytes:
    # Django's and itsdangerous' urlsafe base64 without padding.
    try:
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise _undecodable("bad base64") from None


def _b64_strict(data: str | bytes, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _undecodable(f"bad base64 in the {what}") from None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_DECOMPRESSED)
    except zlib.error:
        raise _undecodable("bad zlib data") from None
    if inflater.unconsumed_tail:
        raise _undecodable("decompresses to more than 1 MiB")
    return out


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _undecodable("not UTF-8") from None


def _ascii(value: str) -> bytes:
    # Every scheme's cookie is ASCII; anything else cannot have been issued.
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise _undecodable("non-ASCII characters") from None


def _json(data: str | bytes) -> object:
    """json.loads; ValueError if not JSON, CookieRejected if nested too deep to parse."""
    try:
        return json.loads(data)
    except RecursionError:
        # "[[[[..." from a visitor: the parser's recursion limit, not a crash.
        raise _undecodable("JSON nested too deeply") from None


def _option(options: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = options.pop(name, default)
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return value


def _no_more(scheme: str, options: dict[str, str]) -> None:
    if options:
        raise ValueError(f"unknown option(s) for {scheme}: {', '.join(sorted(options))}")


# --- Django ---------------------------------------------------------------------------


def _django(secret: str, options: dict[str, str]) -> Unsealer:
    fmt = _option(options, "format", "object", ("object", "signed_cookie"))
    algorithm = _hash(options.pop("algorithm", "sha256"), "algorithm")
    if fmt == "object":
        salts = [options.pop("salt", "django.contrib.sessions.backends.signed_cookies")]
        key_material = secret
    else:
        # HttpResponse.set_signed_cookie(name, value, salt=S): the key is
        # "django.http.cookies" + SECRET_KEY, the salt binds the cookie's name (Django
        # 5.2.x's length-prefixed salt, then the older name + S it still accepts).
        name = options.pop("cookie_name", "")
        if not name:
            raise ValueError("format signed_cookie needs cookie_name")
        salt = options.pop("salt", "")
        salts = [f"django.http.cookies.v2:{len(salt)}:{salt}{name}", name + salt]
        key_material = "django.http.cookies" + secret
    _no_more("django", options)
    # Signer.signature: HMAC keyed with hash(salt + "signer" + key), urlsafe b64.
    keys = [_digest(algorithm, (salt + "signer" + key_material).encode()) for salt in salts]

    def unseal(value: str) -> str:
        raw = _ascii(value)
        signed, sep, signature = raw.rpartition(b":")
        if not sep:
            raise _undecodable("no signature")
        if not any(_same(signature, _b64url_nopad(_hmac(k, algorithm, signed))) for k in keys):
            raise _forged("signature does not match")
        payload, sep, _timestamp = signed.rpartition(b":")
        if not sep:
            raise _undecodable("no timestamp")
        if fmt == "signed_cookie":
            return _text(payload)
        return _text(_django_payload(payload))

    return unseal


def _django_payload(payload: bytes) -> bytes:
    # signing.dumps: "." marks a zlib-compressed payload, then urlsafe b64 without "=".
    if payload.startswith(b"."):
        return _inflate(_b64url_decode(payload[1:]))
    return _b64url_decode(payload)


# The salt Django's database-backed stores sign session_data with:
# "django.contrib.sessions." + the store class's __qualname__ (SessionStore for db and
# cached_db alike).
DJANGO_SESSION_DATA_SALT = "django.contrib.sessions.SessionStore"


def django_session_loads(
    session_data: str,
    secret: str,
    salt: str = DJANGO_SESSION_DATA_SALT,
    *,
    previous: Sequence[str] = (),
) -> dict[str, object]:
    """Decode ``django_session.session_data`` (Django >= 3.1), signature checked.

    ``previous``: ``SECRET_KEY_FALLBACKS``, which Django also reads session data with.
    Raises `CookieRejected` like `unseal`: a row written with another ``SECRET_KEY``
    is ``forged``, one that is not JSON of an object ``undecodable``.
    """
    text = _django_loads(secret, salt, tuple(previous))(session_data)
    try:
        data = _json(text)
    except ValueError:
        raise _undecodable("not JSON") from None
    if not isinstance(data, dict):
        raise _undecodable("not a JSON object")
    return data


@functools.lru_cache(maxsize=16)
def _django_loads(secret: str, salt: str, previous: tuple[str, ...]) -> Unsealer:
    return _first_verifying([_django(s, {"salt": salt}) for s in (secret, *previous)])


# --- itsdangerous (Flask) -------------------------------------------------------------


def _itsdangerous(secret: str, options: dict[str, str]) -> Unsealer:
    salt = options.pop("salt", "cookie-session").encode()
    algorithm = _hash(options.pop("digest", "sha1"), "digest")
    derivation = _option(
        options, "key_derivation", "hmac", ("hmac", "django-concat", "concat", "none")
    )
    fmt = _option(options, "format", "session", ("session", "value"))
    _no_more("itsdangerous", options)
    secret_bytes = secret.encode()
    if derivation == "hmac":
        key = _hmac(secret_bytes, algorithm, salt)
    elif derivation == "django-concat":
        key = _digest(algorithm, salt + b"signer" + secret_bytes)
    elif derivation == "concat":
        key = _digest(algorithm, salt + secret_bytes)
    else:
        key = secret_bytes

    def unseal(value: str) -> str:
        raw = _ascii(value)
        signed, sep, signature = raw.rpartition(b".")
        if not sep:
            raise _undecodable("no signature")
        if not _same(signature, _b64url_nopad(_hmac(key, algorithm, signed))):
            raise _forged("signature does not match")
        if fmt == "value":
            return _text(signed)
        payload, sep, _timestamp = signed.rpartition(b".")
        if not sep:
            raise _undecodable("no timestamp")
        # URLSafeSerializer: like Django's, "." marks zlib, urlsafe b64 without "=".
        return _text(_django_payload(payload))

    return unseal


# --- Laravel --------------------------------------------------------------------------

_LARAVEL_CIPHERS = {"aes-256-cbc": 32, "aes-128-cbc": 16, "aes-256-gcm": 32, "aes-128-gcm": 16}


def laravel_key(app_key: str) -> bytes:
    """APP_KEY as Laravel reads it: ``base64:...`` decoded, anything else as bytes."""
    if app_key.startswith("base64:"):
        try:
            return base64.b64decode(app_key[len("base64:") :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("APP_KEY: the text after 'base64:' is not base64") from None
    return app_key.encode()


def _laravel(secret: str, options: dict[str, str]) -> Unsealer:
    cookie_name = options.pop("cookie_name", "laravel_session")
    cipher = _option(options, "cipher", "aes-256-cbc", tuple(_LARAVEL_CIPHERS))
    _no_more("laravel", options)
    key = laravel_key(secret)
    if len(key) != _LARAVEL_CIPHERS[cipher]:
        raise ValueError(
            f"APP_KEY is {len(key)} bytes, {cipher} needs {_LARAVEL_CIPHERS[cipher]}"
            " (a key from `php artisan key:generate` starts with 'base64:')"
        )
    gcm = cipher.endswith("gcm")
    sha256 = hashes.SHA256()
    # EncryptCookies prefixes the plaintext with HMAC-SHA1(name + "v2", APP_KEY) + "|",
    # so a value encrypted for one cookie cannot be replayed as another.
    sha1 = hashes.SHA1()  # noqa: S303 - Laravel's format, inside an HMAC
    prefix = _hmac(key, sha1, (cookie_name + "v2").encode()).hex().encode() + b"|"

    def unseal(value: str) -> str:
        try:
            payload = _json(_b64_strict(_ascii(value), "cookie"))
        except ValueError:
            raise _undecodable("not base64 JSON") from None
        if not isinstance(payload, dict):
            raise _undecodable("not a JSON object")
        iv_b64, ct_b64, mac = payload.get("iv"), payload.get("value"), payload.get("mac")
        if not (isinstance(iv_b64, str) and isinstance(ct_b64, str) and isinstance(mac, str)):
            raise _undecodable("iv, value or mac missing")
        iv = _b64_strict(iv_b64, "iv")
        ciphertext = _b64_strict(ct_b64, "value")
        if gcm:
            tag = payload.get("tag")
            if not isinstance(tag, str):
                raise _undecodable("tag missing")
            try:
                plain = AESGCM(key).decrypt(iv, ciphertext + _b64_strict(tag, "tag"), None)
            except InvalidTag:
                raise _forged("GCM tag does not verify") from None
            except ValueError:
                raise _undecodable("bad iv or tag length") from None
        else:
            # Encrypter::hash: hex HMAC-SHA256 over the base64 iv and value as sent.
            expected = _hmac(key, sha256, (iv_b64 + ct_b64).encode()).hex().encode()
            if not _same(mac.encode("utf-8", "replace"), expected):
                raise _forged("MAC does not match")
            plain = _cbc_decrypt(key, iv, ciphertext)
        if not _same(plain[: len(prefix)], prefix):
            raise _forged("cookie prefix is not this cookie's")
        return _text(plain[len(prefix) :])

    return unseal


def _cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    if len(iv) != 16 or not ciphertext or len(ciphertext) % 16:
        raise _undecodable("bad iv or ciphertext length")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise _undecodable("bad padding") from None


# --- Rails ----------------------------------------------------------------------------


def _rails_keys(
    secret: str, salt: str, key_digest: str, iterations: int, length: int
) -> list[bytes]:
    # ActiveSupport::KeyGenerator: PBKDF2-HMAC(secret_key_base, salt, 1000 iterations).
    # Rails 7.0's defaults moved the hash from SHA1 to SHA256; "auto" accepts both, as
    # an application that rotates its cookies from the old digest does.
    digests = ["sha256", "sha1"] if key_digest == "auto" else [key_digest]
    return [
        PBKDF2HMAC(
            algorithm=_hash(name, "key_digest"),
            length=length,
            salt=salt.encode(),
            iterations=iterations,
        ).derive(secret.encode())
        for name in digests
    ]


def _rails(secret: str, options: dict[str, str]) -> Unsealer:
    mode = _option(options, "mode", "encrypted", ("encrypted", "signed"))
    cookie_name = options.pop("cookie_name", None)
    salt = options.pop(
        "salt", "authenticated encrypted cookie" if mode == "encrypted" else "signed cookie"
    )
    key_digest = _option(options, "key_digest", "auto", ("auto", *_HASHES))
    try:
        iterations = int(options.pop("iterations", "1000"))
    except ValueError:
        raise ValueError("iterations: not a whole number") from None
    # MessageVerifier reads its HMAC's name from signed_cookie_digest, SHA1 unless the
    # application set it (no load_defaults up to 8.1 changes it); the hex length tells
    # which one signed, and every one of them needs the key.
    digest_name = _option(options, "digest", "auto", ("auto", *_HASHES))
    by_length = {
        2 * algorithm.digest_size: algorithm
        for algorithm in (
            [h() for h in _HASHES.values()]
            if digest_name == "auto"
            else [_hash(digest_name, "digest")]
        )
    }
    _no_more("rails", options)
    purpose = None if cookie_name is None else f"cookie.{cookie_name}"
    if mode == "encrypted":
        # MessageEncryptor.key_len("aes-256-gcm") is 32.
        aeads = [AESGCM(k) for k in _rails_keys(secret, salt, key_digest, iterations, 32)]

        def unseal(value: str) -> str:
            parts = value.split("--")
            if len(parts) != 3:
                raise _undecodable("not data--iv--tag")
            data, iv, tag = (_b64_strict(p, "message") for p in parts)
            if len(iv) != 12 or len(tag) != 16:
                raise _undecodable("bad iv or tag length")
            for aead in aeads:
                try:
                    plain = aead.decrypt(iv, data + tag, None)
                except InvalidTag:
                    continue
                return _rails_message(plain, purpose)
            raise _forged("GCM tag does not verify")

        return unseal

    # KeyGenerator#generate_key's default length is 64 bytes.
    keys = _rails_keys(secret, salt, key_digest, iterations, 64)

    def verify(value: str) -> str:
        data, sep, hexdigest = value.rpartition("--")
        if not sep:
            # A bare value (session_id=1) where the application reads cookies.signed:
            # Rails finds no session, and so does this.
            raise _forged("not signed (no --digest)")
        raw, given = _ascii(data), _ascii(hexdigest).lower()
        digest = by_length.get(len(given))
        if digest is None:
            raise _forged("signature of another length than the digest's")
        for key in keys:
            if _same(given, _hmac(key, digest, raw).hex().encode()):
                return _rails_message(_b64_strict(raw, "message"), purpose)
        raise _forged("signature does not match")

    return verify


# What the application must change for its cookies to be read here, by serializer.
MARSHAL_COOKIE = (
    "Marshal-serialized: the application's cookies_serializer is :marshal or :hybrid "
    "(an old cookie); set it to :json (the default since Rails 7.0)"
)
MESSAGE_PACK_COOKIE = (
    "MessagePack-serialized: the application's cookies_serializer is :message_pack; set it to :json"
)


def _rails_message(plain: bytes, purpose: str | None) -> str:
    # SerializerWithFallback tells the serializers apart by their first bytes, and so
    # does this: Marshal's version "\x04\x08" and ActiveSupport::MessagePack's
    # signature "\xcc\x80" (128 packed). Both are Ruby object graphs (Marshal runs
    # code on load): not data this module decodes.
    if plain.startswith(b"\x04\x08"):
        raise _undecodable(MARSHAL_COOKIE)
    if plain.startswith(b"\xcc\x80"):
        raise _undecodable(MESSAGE_PACK_COOKIE)
    text = _text(plain)
    try:
        decoded = _json(text)
    except ValueError:
        # A cookie written before Rails 6's metadata, or with the Marshal serializer.
        return text
    if isinstance(decoded, dict) and isinstance(decoded.get("_rails"), dict):
        # The cookie jar's envelope: {"_rails": {"message": b64(serialized), "exp",
        # "pur": "cookie.NAME"}} (or "data" when the serializer carries the metadata).
        meta = decoded["_rails"]
        # Rails reads a cookie with its purpose, then again without one: an envelope
        # with no purpose (written before use_cookies_with_metadata, "pur": null) is
        # accepted under any name, one naming another cookie under none.
        if purpose is not None and meta.get("pur") not in (None, purpose):
            raise _forged("purpose is another cookie's")
        if isinstance(meta.get("message"), str):
            return _rails_message(_b64_strict(meta["message"], "envelope"), None)
        decoded = meta.get("data")
        text = json.dumps(decoded, separators=(",", ":"))
    if isinstance(decoded, str):
        return decoded
    if isinstance(decoded, int) and not isinstance(decoded, bool):
        return str(decoded)
    return text


# --- Express --------------------------------------------------------------------------


def _express(secret: str, options: dict[str, str]) -> Unsealer:
    _no_more("express", options)
    key = secret.encode()
    sha256 = hashes.SHA256()

    def unseal(value: str) -> str:
        raw = _ascii(value)
        if not raw.startswith(b"s:"):
            # express-session ignores an unsigned connect.sid: no session.
            raise _forged("not signed (no 's:')")
        sid, sep, signature = raw[2:].rpartition(b".")
        if not sep:
            raise _undecodable("no signature")
        expected = base64.b64encode(_hmac(key, sha256, sid)).rstrip(b"=")
        if not _same(signature, expected):
            raise _forged("signature does not match")
        return _text(sid)

    return unseal


# --- entry points ---------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[str, dict[str, str]], Unsealer]] = {
    "django": _django,
    "itsdangerous": _itsdangerous,
    "laravel": _laravel,
    "rails": _rails,
    "express": _express,
}


def _first_verifying(inners: list[Unsealer]) -> Unsealer:
    """The first secret's unsealer, then the next ones' for what it finds forged."""

    def inner(value: str) -> str:
        for attempt in inners[:-1]:
            try:
                return attempt(value)
            except CookieRejected as rejected:
                if rejected.reason != "forged":
                    raise  # its shape is wrong whatever the key
        return inners[-1](value)

    return inner


def unsealer(scheme: str, secret: str, *, previous: Sequence[str] = (), **options: str) -> Unsealer:
    """Build the unsealing function of one site (keys derived once, here).

    ``previous`` are secrets the application still accepts after a rotation (Django's
    ``SECRET_KEY_FALLBACKS``, Flask's ``SECRET_KEY_FALLBACKS``, Laravel's
    ``APP_PREVIOUS_KEYS``, express-session's older ``secret`` entries, Rails' cookie
    rotations of ``secret_key_base``): a cookie that is forged under ``secret`` is
    tried under each of them in turn.

    Raises ``ValueError`` (a configuration problem, worded without the secret) for an
    unknown scheme or option, or a secret the scheme cannot use. The function it
    returns takes the cookie value as logged (URL-encoded or not) and raises
    `CookieRejected` for a cookie the application did not issue.
    """
    try:
        build = _BUILDERS[scheme]
    except KeyError:
        raise ValueError(f"unknown scheme {scheme!r} (one of {', '.join(SCHEMES)})") from None
    if isinstance(previous, str):
        raise ValueError("previous: a list of secrets, not one string")
    if not secret or not all(previous):
        raise ValueError(f"{scheme}: a secret is empty")
    inner = _first_verifying([build(s, dict(options)) for s in (secret, *previous)])

    def unseal(value: str) -> str:
        # Rack, PHP and express-session URL-encode the cookie ("%3D", "%2F", "s%3A");
        # no scheme's alphabet has "%", and unquote (not unquote_plus) keeps "+".
        if "%" in value:
            try:
                value = urllib.parse.unquote(value, errors="strict")
            except UnicodeDecodeError:
                raise _undecodable("bad URL encoding") from None
        return inner(value.strip())

    return unseal


def unseal(
    scheme: str, value: str, secret: str, *, previous: Sequence[str] = (), **options: str
) -> str:
    """`unsealer` for one value; the keys of recent (scheme, secrets, options) are kept."""
    return _cached(scheme, secret, tuple(previous), tuple(sorted(options.items())))(value)


@functools.lru_cache(maxsize=32)
def _cached(
    scheme: str, secret: str, previous: tuple[str, ...], options: tuple[tuple[str, str], ...]
) -> Unsealer:
    return unsealer(scheme, secret, previous=previous, **dict(options))
