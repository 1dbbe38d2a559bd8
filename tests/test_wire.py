"""The frame reader: any bytes in, frames or a clean FrameError out."""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle

import pytest
from helpers import Blob
from hypothesis import given, settings
from hypothesis import strategies as st

from forkpool import _wire
from forkpool._wire import HEADER, MAGIC, Frame, FrameError, FrameReader, Kind

frames_strategy = st.lists(
    st.tuples(st.sampled_from(list(Kind)), st.binary(max_size=2000)), max_size=5
)


def _encode(frames: list[tuple[Kind, bytes]]) -> bytes:
    return b"".join(HEADER.pack(MAGIC, kind, len(payload)) + payload for kind, payload in frames)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _raise_value_error() -> None:
    raise ValueError("bad value")


def _through_reader(buffers: list[memoryview]) -> list[bytearray]:
    """Send out-of-band buffers through a FrameReader as BUFFER frames."""
    reader = FrameReader()
    frames: list[Frame] = []
    for buffer in buffers:
        frames.extend(reader.feed(HEADER.pack(MAGIC, Kind.BUFFER, buffer.nbytes) + bytes(buffer)))
    assert all(type(frame.payload) is bytearray for frame in frames)
    return [frame.payload for frame in frames]  # type: ignore[misc]


class TestFrameReader:
    @given(frames=frames_strategy, cuts=st.lists(st.integers(min_value=0), max_size=20))
    def test_frames_survive_any_split(self, frames, cuts):
        """Frames come out whole however the bytes are split into reads."""
        reader = FrameReader()
        out: list[Frame] = []
        for piece in _split(_encode(frames), cuts):
            out.extend(reader.feed(piece))
        assert [(f.kind, bytes(f.payload)) for f in out] == frames
        assert not reader.mid_frame

    @given(data=st.binary(max_size=4000))
    @settings(max_examples=300)
    def test_any_bytes_give_frames_or_frame_error(self, data):
        """Arbitrary bytes never crash the reader with anything but FrameError."""
        with contextlib.suppress(FrameError):
            FrameReader().feed(data)

    @given(claimed=st.integers(min_value=65, max_value=2**64 - 1), sent=st.binary(max_size=64))
    def test_memory_follows_bytes_received_not_bytes_claimed(self, claimed, sent):
        """A header claiming a huge payload allocates no more than what arrived (or 64 MiB)."""
        reader = FrameReader()
        reader.feed(HEADER.pack(MAGIC, Kind.RESULT, claimed) + sent)
        assert reader.mid_frame
        assert len(reader._payload) <= min(claimed, 64 << 20)

    @pytest.mark.parametrize("claimed", [2**63, 2**62])
    def test_impossible_buffer_length_is_a_frame_error(self, claimed):
        """A BUFFER header claiming more than any mapping can hold is a FrameError."""
        with pytest.raises(FrameError, match="cannot be received"):
            FrameReader().feed(HEADER.pack(MAGIC, Kind.BUFFER, claimed) + b"abc")

    def test_large_buffer_is_read_into_its_own_mapping(self):
        """A large BUFFER frame arrives whole, in writable memory of exactly its size."""
        payload = os.urandom(3 << 20)
        reader = FrameReader()
        frames = reader.feed(HEADER.pack(MAGIC, Kind.BUFFER, len(payload)) + payload)
        assert len(frames) == 1
        assert len(frames[0].payload) == len(payload)
        assert bytes(frames[0].payload) == payload
        assert not memoryview(frames[0].payload).readonly

    def test_bad_magic(self):
        """A frame without the magic bytes is a FrameError."""
        with pytest.raises(FrameError, match="magic"):
            FrameReader().feed(b"xx" + bytes(9))

    def test_unknown_kind(self):
        """An unknown frame kind is a FrameError."""
        with pytest.raises(FrameError, match="kind 99"):
            FrameReader().feed(HEADER.pack(MAGIC, 99, 0))

    def test_truncated_stream_is_visible(self):
        """A frame cut short leaves the reader mid-frame (the parent reports it)."""
        reader = FrameReader()
        assert reader.feed(HEADER.pack(MAGIC, Kind.RESULT, 10) + b"abc") == []
        assert reader.mid_frame

    def test_reads_a_large_frame_from_a_pipe(self):
        """read() drains a real non-blocking pipe into a frame larger than the pipe."""
        payload = os.urandom(3 << 20)
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        reader = FrameReader()
        frames: list[Frame] = []
        data = HEADER.pack(MAGIC, Kind.RESULT, len(payload)) + payload
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(write_fd, view[: 1 << 16]) :]
                frames.extend(reader.read(read_fd))
            os.close(write_fd)
            write_fd = -1
            frames.extend(reader.read(read_fd))
        finally:
            os.close(read_fd)
            if write_fd != -1:
                os.close(write_fd)
        assert reader.eof
        assert len(frames) == 1
        assert frames[0].payload == payload


class TestPayloads:
    @given(value=st.recursive(st.none() | st.integers() | st.text(), st.lists))
    def test_results_round_trip(self, value):
        """Plain values survive encode_result/decode_result."""
        outcome = _wire.encode_result(value)
        assert outcome.kind is Kind.RESULT
        assert _wire.decode_result(outcome.payload, _through_reader(outcome.buffers)) == value

    @pytest.mark.parametrize("make", [bytes, bytearray], ids=["bytes", "bytearray"])
    def test_top_level_blobs_travel_out_of_band(self, make):
        """A large top-level bytes/bytearray leaves the pickle and comes back as its own type."""
        value = make(os.urandom(_wire.OUT_OF_BAND_MIN + 1))
        outcome = _wire.encode_result(value)
        assert len(outcome.buffers) == 1
        assert len(outcome.payload) < 100
        decoded = _wire.decode_result(outcome.payload, _through_reader(outcome.buffers))
        assert type(decoded) is make
        assert decoded == value

    def test_small_blobs_stay_in_the_pickle(self):
        """Buffers under the threshold are pickled in band (a frame each would cost more)."""
        outcome = _wire.encode_result(bytearray(100))
        assert outcome.buffers == []
        assert _wire.decode_result(outcome.payload) == bytearray(100)

    def test_pickle_buffers_at_any_depth_travel_out_of_band(self):
        """Objects pickled through PickleBuffer (as numpy arrays are) come back on our buffers."""
        value = {"a": [Blob(b"x" * (1 << 17)), Blob(b"y" * 10)], "b": Blob(b"z" * (1 << 18))}
        outcome = _wire.encode_result(value)
        assert len(outcome.buffers) == 2
        buffers = _through_reader(outcome.buffers)
        decoded = _wire.decode_result(outcome.payload, buffers)
        assert decoded == value
        assert decoded["b"].data is buffers[1]  # rebuilt on the received memory, no copy

    def test_corrupt_result_payload(self):
        """A result payload that does not unpickle is a ResultNotPicklableError."""
        with pytest.raises(_wire.ResultNotPicklableError, match="could not be unpickled"):
            _wire.decode_result(b"\x80\x05garbage")

    def test_exception_payload_round_trip(self):
        """An encoded exception decodes to its type with the traceback as cause."""
        try:
            _raise_value_error()
        except ValueError as exc:
            payload = _wire.encode_exception(exc)
        decoded = _wire.decode_exception(payload)
        assert type(decoded) is ValueError
        assert str(decoded) == "bad value"
        assert "_raise_value_error" in str(decoded.__cause__)

    def test_exception_recipe_must_name_an_exception(self):
        """A forged rebuild recipe naming a non-exception class is not obeyed."""
        forged = pickle.dumps(("forkpool.rebuild-exception", dict, (), {}))
        payload = pickle.dumps((forged, "x.Y", "msg", "tb"))
        decoded = _wire.decode_exception(payload)
        assert isinstance(decoded, _wire.RemoteTaskError)
