"""The teacher cache's signed shards: the per-user signing key, and how a shard is written, named and read back. A
module of its own because it is the on-disk format and its trust boundary: whether a file on a (possibly shared)
disk is a shard of this user, cache key, epoch and mode is decided here, apart from which key and which rows
:class:`~hf_distill.training.teacher_cache.TeacherCache` asks for.

Shards are authenticated, not merely checksummed: a cache directory may be shared (a cluster file system), and a
checksum in the name catches damage but not a deliberate edit whose writer re-hashes the file. Every shard is named by
its HMAC-SHA256 tag under a per-user secret key kept outside the cache (:func:`signing_key`:
``~/.cache/hf_distill/cache.key`` or ``$HF_DISTILL_CACHE_KEY``, 32 random bytes created with mode 0600 on first use),
prefixed by a public id of that key (``<signer>``). On read, a shard of this key whose tag does not verify (truncated,
corrupted, or edited by anyone without the key) is refused with one warning line, removed, and its rows are computed
(and stored) again; shards of other keys (another user's) are never read, nor removed. Verifying costs one HMAC over
each shard when its epoch is loaded, what the SHA-256 of the name cost before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
import uuid

import safetensors.torch
from torch import Tensor

from .teacher_cache_topk import TAIL_LOGIT, TOPK_INDICES, TOPK_VALUES

#: bumped whenever the shard layout changes: caches written by another layout are misses (2: signed shards)
CACHE_FORMAT = "2"
#: the environment variable that names the signing key's file (default: ``~/.cache/hf_distill/cache.key``)
KEY_ENV = "HF_DISTILL_CACHE_KEY"
KEY_BYTES = 32
SHARD_SUFFIX = ".safetensors"
#: the columns of every shard: each row's place in the training set and its input digest
DIGEST = "input_digest"
INDEX = "index"
#: the shard metadata that says which mode wrote it (absent: exact) and, for top-k, over how many classes
TOPK_META = "topk"
CLASSES_META = "classes"


# -- the signing key ----------------------------------------------------------------------------------------------
class CacheKeyError(ValueError):
    """The teacher cache's signing key cannot be used; the message says how to fix it."""


def signing_key_path() -> str:
    """Where the signing key lives: ``$HF_DISTILL_CACHE_KEY``, else ``hf_distill/cache.key`` under
    ``$XDG_CACHE_HOME`` (default ``~/.cache``): in the user's own files, never in a (possibly shared) cache dir."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hf_distill", "cache.key")


def _create_key(path: str) -> None:
    """Write a new random key, mode 0600, atomically: processes starting together all end up with the first one."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process made it first: keep theirs
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def signing_key(path: str | None = None) -> bytes:
    """The secret that signs this user's teacher-cache shards (created on first use; see the module docstring).

    Raises:
        CacheKeyError: the key file is another user's, can be read or written by other users, or is not a key.
    """
    path = path or signing_key_path()
    if not os.path.exists(path):
        _create_key(path)
    st = os.stat(path)
    if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o077:
        raise CacheKeyError(
            f"The teacher-cache key {path} is not private (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}): "
            f"anyone who can read it can forge cache shards. Make it yours with mode 600 (chmod 600 {path}), or "
            "delete it to get a new one (shards signed with the old key are then computed again)."
        )
    with open(path, "rb") as f:
        key = f.read()
    if len(key) < KEY_BYTES:
        raise CacheKeyError(
            f"The teacher-cache key {path} holds {len(key)} bytes, not a key of {KEY_BYTES}: delete it to get a "
            "new one (shards signed with the old key are then computed again)."
        )
    return key


def signer_id(key: bytes) -> str:
    """A public name of a signing key (the prefix of its shards); says nothing about the key itself."""
    return hashlib.sha256(b"hf_distill teacher cache signer|" + key).hexdigest()[:16]


def shard_tag(key: bytes, data: bytes) -> str:
    """The HMAC-SHA256 of a shard's bytes under ``key``, in hex."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


# -- shards -----------------------------------------------------------------------------------------------------
def shard_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


def shard_name(key: bytes, data: bytes) -> str:
    """``<signer>-<tag>.safetensors``: who signed the shard, and its HMAC under that signer's key."""
    return f"{signer_id(key)}-{shard_tag(key, data)}{SHARD_SUFFIX}"


def write_shard(folder: str, tensors: dict[str, Tensor], metadata: dict[str, str], key: bytes) -> int:
    """Write one shard atomically, named by its signature under ``key`` (:func:`shard_name`); returns its size in
    bytes."""
    data = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, shard_name(key, data))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return len(data)


def read_shard(
    path: str, key_hash: str, epoch: int, key: bytes, topk: int | None = None
) -> tuple[dict[str, Tensor], dict[str, str]] | None:
    """The tensors and metadata of a shard, or ``None`` when its name is not its signature under ``key``
    (truncated, corrupted or forged) or it belongs to another cache key, epoch or mode (exact, top-k)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not hmac.compare_digest(shard_name(key, data), os.path.basename(path)):
            return None
        meta = shard_metadata(data)
        tensors = safetensors.torch.load(data)
    except (OSError, ValueError, struct.error, safetensors.SafetensorError):
        return None
    if meta.get("key") != key_hash or meta.get("epoch") != str(epoch) or meta.get("format") != CACHE_FORMAT:
        return None
    if meta.get(TOPK_META) != (None if topk is None else str(topk)):
        return None  # the key already holds k: this is a second lock, not the first
    if topk is not None and not (
        meta.get(CLASSES_META, "").isdigit()
        and int(meta[CLASSES_META]) > topk
        and {TOPK_VALUES, TOPK_INDICES, TAIL_LOGIT} <= set(tensors)
    ):
        return None
    rows = len(tensors.get(INDEX, ()))
    if DIGEST not in tensors or any(len(t) != rows for t in tensors.values()):
        return None
    return tensors, meta


__all__ = [
    "CACHE_FORMAT",
    "CLASSES_META",
    "DIGEST",
    "INDEX",
    "KEY_ENV",
    "SHARD_SUFFIX",
    "TOPK_META",
    "CacheKeyError",
    "read_shard",
    "shard_metadata",
    "shard_name",
    "shard_tag",
    "signer_id",
    "signing_key",
    "signing_key_path",
    "write_shard",
]
