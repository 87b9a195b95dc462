"""The embedding LRU: bounded by entries and bytes, counting hits and misses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_webui_sam.embedding_cache import CacheKey, EmbeddingCache, EncodedImage
from sd_webui_sam.images import image_content_key


def entry(name: str, nbytes: int = 1000, model: str = "m") -> EncodedImage:
    features = {"image_embeddings": torch.zeros(nbytes // 4)}
    return EncodedImage(
        key=CacheKey(image_hash=name, model_id=model, device="cpu", dtype="float32"),
        features=features,
        original_size=(10, 10),
        input_size=(10, 10),
        nbytes=EncodedImage.size_of(features),
    )


def test_hit_and_miss_counters():
    cache = EmbeddingCache(max_entries=4, max_bytes=10**6)
    first = entry("a")
    assert cache.get(first.key) is None
    cache.put(first)
    assert cache.get(first.key) is first
    assert cache.get(first.key) is first
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"], stats["bytes"]) == (2, 1, 1, 1000)


def test_evicts_least_recently_used_by_count():
    cache = EmbeddingCache(max_entries=2, max_bytes=10**6)
    a, b, c = entry("a"), entry("b"), entry("c")
    cache.put(a)
    cache.put(b)
    assert cache.get(a.key) is a  # a is now the most recently used
    cache.put(c)
    assert b.key not in cache
    assert a.key in cache and c.key in cache
    assert cache.stats()["evictions"] == 1


def test_evicts_by_bytes():
    cache = EmbeddingCache(max_entries=100, max_bytes=2500)
    a, b, c = entry("a"), entry("b"), entry("c")
    for item in (a, b, c):
        cache.put(item)
    assert a.key not in cache
    assert b.key in cache and c.key in cache
    assert cache.nbytes == 2000
    big = entry("big", nbytes=2400)
    cache.put(big)
    assert len(cache) == 1 and big.key in cache and cache.nbytes == 2400


def test_entry_larger_than_the_budget_is_not_kept_and_evicts_nothing():
    cache = EmbeddingCache(max_entries=4, max_bytes=1500)
    small = entry("small")
    cache.put(small)
    cache.put(entry("huge", nbytes=4000))
    assert len(cache) == 1 and small.key in cache


def test_zero_entries_disables_caching():
    cache = EmbeddingCache(max_entries=0, max_bytes=10**6)
    item = entry("a")
    cache.put(item)
    assert cache.get(item.key) is None and len(cache) == 0


def test_putting_the_same_key_twice_counts_bytes_once():
    cache = EmbeddingCache(max_entries=4, max_bytes=10**6)
    cache.put(entry("a"))
    cache.put(entry("a"))
    assert len(cache) == 1 and cache.nbytes == 1000


def test_discard_model_and_clear():
    cache = EmbeddingCache(max_entries=10, max_bytes=10**6)
    cache.put(entry("a", model="one"))
    cache.put(entry("b", model="one"))
    cache.put(entry("a", model="two"))
    assert cache.discard_model("one") == 2
    assert len(cache) == 1 and cache.nbytes == 1000
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_negative_limits_are_refused():
    with pytest.raises(ValueError):
        EmbeddingCache(max_entries=-1)


def test_content_hash_depends_on_pixels_and_shape_not_on_the_array_object():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert image_content_key(image) == image_content_key(image.copy())
    # A non-contiguous view with the same pixels hashes like its contiguous copy.
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, ::2] = image
    assert image_content_key(wide[:, ::2]) == image_content_key(image)
    changed = image.copy()
    changed[5, 5, 1] ^= 1
    assert image_content_key(changed) != image_content_key(image)
    assert image_content_key(image.reshape(30, 20, 3)) != image_content_key(image)
