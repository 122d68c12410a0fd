"""Who made a request: the session key a log line carries → the application's user.

The package splits the work by concern: `keys` (which field holds the key, its
RFC 6265 reading and the transforms), `signed` (the frameworks' signed and
encrypted cookies), `stores` (an SQL row, a Redis value, a session file), `sql`
(the read-only users database and its errors told apart), `decoders` (Django,
PHP, JSON, msgpack, plain pickle; the user id at a path), `presets` (the
frameworks' defaults), `cache` (bounded expiring caches), `rows` (a result row →
`User`) and `resolver` (putting them together, with the failure policy).
"""

from tirreno_shipper.users.keys import MAX_KEY_CHARS
from tirreno_shipper.users.resolver import LAST_SEEN_TTL, UserResolver
from tirreno_shipper.users.rows import anonymous_user, map_row, mask_ip

__all__ = [
    "LAST_SEEN_TTL",
    "MAX_KEY_CHARS",
    "UserResolver",
    "anonymous_user",
    "map_row",
    "mask_ip",
]
