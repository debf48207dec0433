"""effnb.cachesize: the cache edge read off a bandwidth curve, its bounds, and the cached record."""
import pytest

from effnb import cachesize, provenance

MIB = 1 << 20


def _curve(points):
    return [(mib * MIB, gbps) for mib, gbps in points]


# the curve of the 2-core Intel VM that reports a 480 MiB L3 (one thread, GB/s)
VM = [(4, 13.1), (8, 19.9), (16, 22.1), (24, 24.1), (32, 23.1), (48, 22.1), (64, 16.3), (128, 16.3),
      (256, 16.7), (512, 16.6), (768, 17.5), (1024, 17.5)]


def test_the_edge_is_the_largest_size_read_clearly_faster_than_memory():
    assert cachesize.edge_bytes(_curve(VM)) == 48 * MIB
    # small arrays slowed by call overhead do not hide a cache above them
    assert cachesize.edge_bytes(_curve([(4, 5.0)] + VM[1:])) == 48 * MIB
    # a cached size that measured slow once: the edge is the one below it
    dip = [(m, 15.0 if m == 48 else g) for m, g in VM]
    assert cachesize.edge_bytes(_curve(dip)) == 32 * MIB
    # no size faster than memory: no edge
    assert cachesize.edge_bytes(_curve([(m, 17.0) for m, _ in VM])) is None


@pytest.mark.parametrize("bad", [[(4, 1.0), (8, 1.0)], [(8, 1.0), (4, 1.0), (16, 1.0)]])
def test_a_curve_too_short_or_out_of_order_is_refused(bad):
    with pytest.raises(ValueError, match="edge_bytes needs"):
        cachesize.edge_bytes(_curve(bad))


@pytest.mark.parametrize("edge, reported, usable", [
    (48 * MIB, 480 * MIB, 48 * MIB),       # the VM: the measured edge
    (None, 480 * MIB, 32 * MIB),           # nothing measured faster: the floor
    (8 * MIB, 480 * MIB, 32 * MIB),        # never below the floor
    (1024 * MIB, 480 * MIB, 480 * MIB),    # never above what the OS reports
    (None, 16 * MIB, 16 * MIB),            # a small cache is its own floor
])
def test_the_usable_cache_is_bounded_by_the_floor_and_the_report(edge, reported, usable):
    assert cachesize.usable(edge, reported) == usable


def test_the_probe_sizes_reach_well_past_the_reported_cache():
    for reported in (1 * MIB, 32 * MIB, 480 * MIB):
        sizes = cachesize.sizes_mib(reported)
        assert sizes == sorted(set(sizes)) and sizes[0] == 4
        assert sizes[-1] == min(cachesize.TOP_MIB, max(256, 4 * reported // MIB))


def test_the_record_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFNB_CACHE", str(tmp_path))
    monkeypatch.setattr(cachesize, "_taken", {})
    taken = []

    def fake_measure():
        taken.append(1)
        return {"hardware_id": provenance.hardware_id(), "reported_bytes": provenance.llc_bytes(),
                "edge_bytes": 48 * MIB, "curve": [], "version": cachesize.VERSION}
    monkeypatch.setattr(cachesize, "measure", fake_measure)
    first = cachesize.record()
    assert cachesize.cache_path().exists() and len(taken) == 1
    monkeypatch.setattr(cachesize, "_taken", {})  # a new process reads the file
    assert cachesize.record()["edge_bytes"] == first["edge_bytes"] and len(taken) == 1
    cachesize.record(refresh=True)
    assert len(taken) == 2
    assert cachesize.llc_bytes() == cachesize.usable(48 * MIB, provenance.llc_bytes())


def test_a_real_measurement_gives_a_curve(monkeypatch):
    monkeypatch.setattr(cachesize, "sizes_mib", lambda reported=None: [1, 2, 4])
    monkeypatch.setattr(cachesize, "SAMPLES", 2)
    rec = cachesize.measure()
    assert [s for s, _ in rec["curve"]] == [1 * MIB, 2 * MIB, 4 * MIB]
    assert all(g > 0 for _, g in rec["curve"])
    assert rec["edge_bytes"] in (None, 1 * MIB)


@pytest.mark.parametrize("edge, reported, words", [
    (48 * MIB, 480 * MIB, "above 48 MiB, below the reported 480 MiB, so the book plans for 48 MiB"),
    (8 * MIB, 480 * MIB, "above 8 MiB, so the book plans for its floor, 32 MiB"),
    (None, 480 * MIB, "its floor, 32 MiB"),
    (64 * MIB, 32 * MIB, "stays fast up to 64 MiB, so the book plans for the reported 32 MiB"),
])
def test_the_phrase_follows_the_measurement(edge, reported, words):
    rec = {"edge_bytes": edge, "reported_bytes": reported, "usable_bytes": cachesize.usable(edge, reported)}
    assert words in cachesize.phrase(rec)
