"""Tests for rfc6455.masking: apply_mask and unmask_payload against RFC 6455 §5.3."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rfc6455 import masking
from rfc6455.masking import apply_mask

THRESHOLD = masking._TRANSLATE_MIN

masks = st.binary(min_size=4, max_size=4)
# Every length near the switch between the two techniques, plus small ones (n % 4 covers all
# key alignments).
edge_lengths = st.sampled_from(
    [*range(10), *range(THRESHOLD - 5, THRESHOLD + 6), 1023, 1024, 1025, 65535, 65536, 65537]
)


def naive(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """RFC 6455 §5.3, octet by octet: j = i MOD 4; transformed-octet-i = original-octet-i XOR
    masking-key-octet-j."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(bytes(data)))


def test_rfc_6455_section_5_7_example() -> None:
    # "A single-frame masked text message": 0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58
    assert apply_mask(b"Hello", bytes.fromhex("37fa213d")) == bytes.fromhex("7f9f4d5158")
    assert apply_mask(bytes.fromhex("7f9f4d5158"), bytes.fromhex("37fa213d")) == b"Hello"


@pytest.mark.parametrize("length", [0, THRESHOLD])
def test_empty_mask_and_zero_key_are_identities(length: int) -> None:
    data = bytes(range(256)) * (length // 256 + 1)
    assert apply_mask(data[:length], b"\x00\x00\x00\x00") == data[:length]


@pytest.mark.parametrize("length", [0, 1, 7, THRESHOLD - 1, THRESHOLD, 5000])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_bytes_like_and_returns_bytes(length: int, kind: type) -> None:
    data = random.Random(length).randbytes(length)
    result = apply_mask(kind(data), b"\x01\x80\xfe\x7f")
    assert type(result) is bytes
    assert result == naive(data, b"\x01\x80\xfe\x7f")


@pytest.mark.parametrize("length", [3, THRESHOLD + 3])
def test_memoryview_slice_at_an_offset(length: int) -> None:
    # The frame parser may hand over a view into a larger buffer; only the view counts.
    buffer = bytearray(random.Random(length).randbytes(length + 10))
    view = memoryview(buffer)[5 : 5 + length]
    assert apply_mask(view, b"abcd") == naive(view, b"abcd")


def test_does_not_modify_input() -> None:
    data = bytearray(b"x" * (THRESHOLD * 2))
    apply_mask(data, b"\xff\xff\xff\xff")
    assert data == b"x" * (THRESHOLD * 2)


@given(data=st.binary(max_size=3 * THRESHOLD), mask=masks)
def test_matches_naive(data: bytes, mask: bytes) -> None:
    assert apply_mask(data, mask) == naive(data, mask)


@given(length=edge_lengths, seed=st.integers(0, 2**32 - 1), mask=masks)
def test_matches_naive_at_edge_lengths(length: int, seed: int, mask: bytes) -> None:
    data = random.Random(seed).randbytes(length)
    assert apply_mask(data, mask) == naive(data, mask)


@given(data=st.binary(max_size=3 * THRESHOLD), mask=masks)
def test_masking_twice_is_identity(data: bytes, mask: bytes) -> None:
    assert apply_mask(apply_mask(data, mask), mask) == data


@given(
    data=st.binary(max_size=3 * THRESHOLD),
    mask=masks,
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_type_does_not_change_result(data: bytes, mask: bytes, kind: type) -> None:
    assert apply_mask(kind(data), mask) == apply_mask(data, mask)


@given(
    prefix=st.binary(max_size=9),
    mask=masks,
    length=edge_lengths,
    suffix=st.binary(max_size=9),
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_unmask_payload_reads_the_key_before_the_payload(
    prefix: bytes, mask: bytes, length: int, suffix: bytes, kind: type
) -> None:
    payload = random.Random(length).randbytes(length)
    buffer = kind(prefix + mask + payload + suffix)
    start = len(prefix) + 4
    result = masking.unmask_payload(buffer, start, start + length)
    # A bytearray from the translate path: the copy unmasked in place.
    assert type(result) is (bytes if length < THRESHOLD else bytearray)
    assert result == naive(payload, mask)
    assert buffer[start : start + length] == payload  # the input is untouched
