"""What a job has already done, remembered in little memory: a resumed job of a million records asks of each
record whether it is spooled already, and holding the keys themselves (or the records) would grow with the job."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


class KeySet:
    """Which records a job has already spooled, as a sorted array of 16-byte hashes of their keys: 16 MB for a
    million records, where a set of the keys themselves takes several times that and the records far more. The
    hash is 128-bit BLAKE2b, so two keys that share one are too unlikely to matter (about 1e-27 at a million)."""

    def __init__(self, keys: Iterable[str]):
        packed = bytearray()
        for key in keys:
            packed += _key_hash(key)
        self.hashes = np.unique(np.frombuffer(bytes(packed), dtype="S16"))  # a record spooled twice counts once

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, key: str) -> bool:
        wanted = np.array(_key_hash(key), dtype="S16")
        at = int(np.searchsorted(self.hashes, wanted))
        return at < len(self.hashes) and self.hashes[at] == wanted


def _key_hash(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
