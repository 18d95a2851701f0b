"""Phase 1's model calls, each cached under a hash of its exact input: the conversation (the reply being
revised, the requests, the few-shot demonstrations, all inside the messages), the sampling parameters and the
model identity. A shard of new replies is written before the next is generated (`core.shard_cache`), so a
killed stage resumes with the calls it had finished, and a rerun of an unchanged chain makes no call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alignment_dagster.backends import Backend, Sampling
from alignment_dagster.core.keys import canonical_json, sha256_hex, slugify
from alignment_dagster.core.shard_cache import ShardCache
from alignment_dagster.core.storage import Storage

Message = dict[str, str]


def call_key(identity: str, sampling: Sampling, messages: Sequence[Message]) -> str:
    return sha256_hex(
        canonical_json({"model": identity, "sampling": sampling.model_dump(), "messages": list(messages)})
    )[:32]


class CallCache(ShardCache):
    """Replies per call key under `cache/revision-calls/<model>/` (storage None: in memory, one run)."""

    def __init__(self, storage: Storage | None, identity: str):
        super().__init__(
            storage, f"cache/revision-calls/{slugify(identity)[:60] or 'model'}-{sha256_hex(identity)[:8]}"
        )
        self.identity = identity


@dataclass
class CallCount:
    """Calls one stage needed, found cached, and made (conversations sent to the model)."""

    needed: int = 0
    cached: int = 0
    made: int = 0


def generate_cached(
    backend: Backend,
    conversations: Sequence[list[Message]],
    sampling: Sampling,
    cache: CallCache,
    count: CallCount,
    *,
    shard_size: int = 16,
) -> tuple[list[str], list[str]]:
    """(reply, key) per conversation: cached replies reused, the others generated `shard_size` at a time and
    each shard cached before the next. Identical conversations in one call are generated once."""
    if cache.identity != backend.identity:
        raise ValueError(f"call cache of {cache.identity} given for {backend.identity}")
    keys = [call_key(backend.identity, sampling, c) for c in conversations]
    known = cache.get_many(list(set(keys)))
    todo: dict[str, list[Message]] = {}
    for key, conversation in zip(keys, conversations, strict=True):
        if key not in known:
            todo.setdefault(key, list(conversation))
    count.needed += len(keys)
    count.cached += len(keys) - len(todo)
    pending = list(todo.items())
    for start in range(0, len(pending), shard_size):
        chunk = pending[start : start + shard_size]
        replies = backend.generate([c for _, c in chunk], n=1, sampling=sampling)
        values = {key: r[0] for (key, _), r in zip(chunk, replies, strict=True)}
        cache.put_many(values)
        known.update(values)
        count.made += len(chunk)
    return [known[k] for k in keys], keys
