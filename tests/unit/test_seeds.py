"""Named random streams: reproducible, and distinct across purposes and integers."""
from pipelines.seeds import derive_seed, numpy_rng


def test_streams_are_reproducible_and_distinct():
    assert derive_seed("shard-order", 0, 1) == derive_seed("shard-order", 0, 1)
    seeds = {derive_seed(p, s, e) for p in ("shard-order", "shuffle", "worker-noise") for s in range(5) for e in range(5)}
    assert len(seeds) == 75 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed("a", 1, 23) != derive_seed("a", 12, 3)  # integers are not concatenated as text
    assert (numpy_rng("x", 1).permutation(10) == numpy_rng("x", 1).permutation(10)).all()
