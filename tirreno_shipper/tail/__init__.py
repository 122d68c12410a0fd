"""Following log files: identity, rotation, recovery after a restart, offsets, partial
lines, globs, compressed siblings, wake-ups. One concern per module:

- `follow`: the ``Tailer``, following files live (offsets, partial lines, rotation, globs);
- `recovery`: at start-up, where the checkpointed files went while the shipper was down;
- `identity`: device + inode + head fingerprint, and opening a file found by name;
- `compressed`: compressed rotated files (names, magic bytes, decompressing readers),
  shared with `reader` (``backfill``, ``--dry-run``);
- `paths`: globs and the rotated siblings of a path;
- `files`: the per-file state the Tailer keeps;
- `waker`: watchdog wake-ups (a hint to poll sooner, never the truth); imported from
  ``tail.waker`` by the daemon alone, so that a backfill or a dry run, which read files
  whole, never load watchdog (~1.6 MB).
"""

from tirreno_shipper.tail.compressed import (
    DECOMPRESS_ERRORS,
    OPENERS,
    compression,
    is_compressed_name,
)
from tirreno_shipper.tail.files import FileStatus
from tirreno_shipper.tail.follow import Tailer
from tirreno_shipper.tail.identity import FINGERPRINT_MAX, fingerprint, identify
from tirreno_shipper.tail.paths import glob_matches, skipped_hint

__all__ = [
    "DECOMPRESS_ERRORS",
    "FINGERPRINT_MAX",
    "OPENERS",
    "FileStatus",
    "Tailer",
    "compression",
    "fingerprint",
    "glob_matches",
    "identify",
    "is_compressed_name",
    "skipped_hint",
]
