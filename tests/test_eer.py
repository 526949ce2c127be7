"""EER movies (Thermo Fisher Electron Event Representation): decoding and fraction grouping.

No EER file lives in the corpus, and neither tifffile nor imagecodecs can write one, so the tests
write their own: each fraction's events are run-length coded as the EER format describes (a
little-endian bit stream of codes: ``skipbits`` bits counting the empty pixels before the next
event, an all-ones count meaning "skip that many and no event", then the event's sub-pixel bits;
the stream ends when the counts reach the last pixel), stored as BigTIFF strips with the EER
compression tag (65000: 8-bit counts, 65001: 7-bit, 65002: counts and sub-pixel widths in tags
65007-65009) and the ``<metadata>`` XML tag 65001 that marks an EER file. tifffile decodes them
with imagecodecs' independent EER decoder, so a decode equal to the events checks the writer too.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tiltflow.io.movies import (
    MovieError,
    eer_group_layout,
    group_frames,
    read_movie_frames,
    read_movie_header,
)

SCHEMES = {65000: (8, 2, 2), 65001: (7, 2, 2), 65002: (6, 2, 3)}  # compression: skip, horz, vert bits
EER_XML = b'<metadata><item name="sensorPixelSize.width">1.0e-10</item></metadata>'


def eer_encode(events: np.ndarray, skipbits: int, horzbits: int, vertbits: int, rng) -> bytes:
    """One fraction (h, w) of 0/1 events as an EER bit stream (random sub-pixel positions)."""
    full = (1 << skipbits) - 1
    acc, pos = 0, 0

    def put(value: int, nbits: int) -> None:
        nonlocal acc, pos
        acc |= value << pos
        pos += nbits

    def skip(n: int) -> None:
        while n >= full:
            put(full, skipbits)
            n -= full
        put(n, skipbits)

    last = 0
    for p in np.flatnonzero(events.ravel()).tolist():
        skip(p - last)
        put(int(rng.integers(1 << horzbits)), horzbits)  # sub-pixel position (unused at 1x decoding)
        put(int(rng.integers(1 << vertbits)), vertbits)
        last = p + 1
    skip(events.size - last)  # the counts end exactly on the last pixel
    nbytes = (pos + 7) // 8 + 2  # the decoder reads whole codes ahead: pad
    return acc.to_bytes(nbytes + nbytes % 2, "little")


def write_eer(path, events: np.ndarray, compression: int = 65001, seed: int = 0):
    """A BigTIFF EER movie of ``events`` (n, h, w): one strip per fraction."""
    skipbits, horzbits, vertbits = SCHEMES[compression]
    rng = np.random.default_rng(seed)
    n, h, w = events.shape
    scheme_tags = (
        [(65007, "H", 1, skipbits, True), (65008, "H", 1, horzbits, True), (65009, "H", 1, vertbits, True)]
        if compression == 65002
        else []
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i in range(n):
            strip = eer_encode(events[i], skipbits, horzbits, vertbits, rng)
            tags = [(65001, 7, None, EER_XML, True)] if i == 0 else []
            # tifffile writes pre-coded strips verbatim only for a codec it knows: zlib here,
            # then the Compression tag is set to the EER scheme in place
            tw.write(
                iter([strip]),
                shape=(h, w),
                dtype=np.uint8,
                compression="zlib",
                photometric="minisblack",
                rowsperstrip=h,
                metadata=None,
                extratags=tags + scheme_tags,
            )
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            page.tags["Compression"].overwrite(compression)
    return path


def random_events(n: int, shape=(48, 64), rate: float = 0.08, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)) < rate


@pytest.mark.parametrize("compression", sorted(SCHEMES))
def test_eer_fractions_decode_to_the_events(tmp_path, compression):
    events = random_events(12, seed=compression)
    events[3] = False  # an empty fraction: one long run of skip codes
    events[4] = np.random.default_rng(2).random(events.shape[1:]) < 0.003  # runs over 255 pixels
    path = write_eer(tmp_path / "movie.eer", events, compression)
    header = read_movie_header(path)
    assert (header.format, header.n_frames, header.size) == ("eer", 12, (64, 48))
    frames = read_movie_frames(path)
    assert frames.shape == (12, 48, 64)
    np.testing.assert_array_equal(frames.astype(bool), events)


@pytest.mark.parametrize(
    "n_fractions, n_groups, per",
    [(40, 4, 10), (42, 4, 10), (42, 7, 6), (40, 16, 2), (5, 8, 1)],
)
def test_eer_grouping_sums_consecutive_fractions(tmp_path, n_fractions, n_groups, per):
    """Warp's grouping: n // groups consecutive fractions per group, the remainder dropped."""
    events = random_events(n_fractions, seed=n_fractions + n_groups)
    path = write_eer(tmp_path / "movie.eer", events)
    groups = read_movie_frames(path, eer_groups=n_groups)
    expected_groups = min(n_groups, n_fractions)
    assert groups.shape == (expected_groups, 48, 64) and groups.dtype == np.float32
    assert eer_group_layout(n_fractions, n_groups) == (expected_groups, per)
    for g in range(expected_groups):
        np.testing.assert_array_equal(groups[g], events[g * per : (g + 1) * per].sum(0))
    assert groups.sum() == events[: expected_groups * per].sum()  # exactly the dropped tail is missing
    np.testing.assert_array_equal(group_frames(events.astype(np.uint8), n_groups), groups)


def test_eer_groups_must_be_positive_and_corrupt_eer_is_a_movie_error(tmp_path):
    with pytest.raises(ValueError, match="groups must be >= 1"):
        eer_group_layout(40, 0)
    path = write_eer(tmp_path / "movie.eer", random_events(6))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offset, size = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    data[offset : offset + size] = b"\xff" * size  # all-ones counts run past the end of the fraction
    bad = tmp_path / "bad.eer"
    bad.write_bytes(bytes(data))
    with pytest.raises(MovieError, match="bad.eer: cannot decode frames"):
        read_movie_frames(bad, eer_groups=2)
