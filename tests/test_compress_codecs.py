"""Property tests of format v2's bit-level codings (distopt.compress.codecs): every coding
round-trips, and the Rice parameter chosen is the smallest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distopt.compress import codecs as K

_arrays = st.integers(1, 16).flatmap(
    lambda width: st.tuples(st.just(width),
                            st.lists(st.integers(0, 2 ** width - 1), max_size=300)))


@settings(max_examples=200, deadline=None)
@given(_arrays)
def test_fixed_width_packing_round_trips(case):
    width, values = case
    u = np.array(values, np.int64)
    data = K.pack_uint(u, width)
    assert len(data) == K.packed_len(len(u), width)
    np.testing.assert_array_equal(K.unpack_uint(data, len(u), width), u)


@settings(max_examples=200, deadline=None)
@given(bits=st.sampled_from([16, 8, 4, 3, 2]), sparse=st.booleans(), data=st.data())
def test_symbols_round_trip_within_their_width(bits, sparse, data):
    qmax = 2 ** (bits - 1) - 1
    codes = np.array(data.draw(st.lists(st.integers(-qmax, qmax).filter(
        lambda c: c != 0 or not sparse), max_size=200)), np.int64)
    u = K.to_symbols(codes, bits, sparse)
    width = K.symbol_width(bits, sparse)
    assert u.size == 0 or (u.min() >= 0 and u.max() < 2 ** width)
    np.testing.assert_array_equal(K.from_symbols(u, bits, sparse), codes)


def test_ternary_non_zeros_are_one_bit_and_out_of_range_symbols_are_refused():
    assert K.symbol_width(2, sparse=True) == 1
    assert K.symbol_width(2, sparse=False) == 2
    assert K.symbol_width(4, sparse=True) == 4 and K.symbol_width(3, sparse=False) == 3
    with pytest.raises(K.CodingError, match="out of range"):
        K.from_symbols(np.array([3]), 2, sparse=False)  # {-1, 0, 1}: symbols 0..2


@settings(max_examples=200, deadline=None)
@given(mask=st.lists(st.booleans(), max_size=400), k=st.integers(0, 12))
def test_rice_coded_gaps_round_trip_to_the_same_positions(mask, k):
    m = np.array(mask, bool)
    gaps = K.gaps_of(m)
    low, unary = K.rice_encode(gaps, k)
    assert len(low) + len(unary) == K.rice_bytes(gaps, k)
    back = K.rice_decode(low, unary, len(gaps), k)
    np.testing.assert_array_equal(back, gaps)
    np.testing.assert_array_equal(K.positions_of(back), np.flatnonzero(m))


@settings(max_examples=100, deadline=None)
@given(mask=st.lists(st.booleans(), min_size=1, max_size=400))
def test_the_chosen_rice_parameter_is_the_smallest(mask):
    gaps = K.gaps_of(np.array(mask, bool))
    k = K.best_rice_k(gaps)
    assert K.rice_bytes(gaps, k) == min(K.rice_bytes(gaps, j) for j in range(K.MAX_RICE_K + 1))


def test_a_short_unary_stream_is_refused():
    # Two quotient terminators (the zeros) where four gaps are asked for.
    with pytest.raises(K.CodingError, match="after 2 of 4 gaps"):
        K.rice_decode(b"\x00", bytes([0b00111111]), 4, 1)


@given(st.integers(0, 2 ** 56 - 1))
def test_varints_round_trip(n):
    data = K.varint(n) + b"tail"
    assert K.read_varint(data, 0) == (n, len(data) - 4)


def test_varints_that_run_past_the_end_or_are_too_long_are_refused():
    with pytest.raises(K.CodingError, match="past the end"):
        K.read_varint(b"\x80\x80", 0)
    with pytest.raises(K.CodingError, match="longer than 8"):
        K.read_varint(b"\xff" * 9, 0)
