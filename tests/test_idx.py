"""The MNIST IDX reader, on small IDX files the tests write byte by byte."""

import gzip
import struct

import numpy as np
import pytest
from otpserve.errors import IDXFormatError
from otpserve.train.idx import read_idx, write_idx


def idx_bytes(code: int, shape: tuple[int, ...], data: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + data


def test_reads_plain_3d_uint8_images(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(0x08, (2, 3, 4), images.tobytes()))
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)


def test_reads_gzipped_1d_labels_by_content_not_name(tmp_path):
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"  # no .gz suffix: detection is by the gzip magic bytes
    path.write_bytes(gzip.compress(idx_bytes(0x08, (5,), labels.tobytes())))
    np.testing.assert_array_equal(read_idx(path), labels)


def test_reads_big_endian_multibyte_types_into_native_order(tmp_path):
    values = np.array([[1.5, -2.25], [3.0, 1e6]], dtype=">f4")
    path = tmp_path / "floats.idx"
    path.write_bytes(idx_bytes(0x0D, (2, 2), values.tobytes()))
    out = read_idx(path)
    assert out.dtype == np.dtype("float32") and out.dtype.isnative
    np.testing.assert_array_equal(out, values.astype(np.float32))


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["round.idx", "round.idx.gz"])
def test_write_then_read_round_trips_every_idx_dtype(tmp_path, dtype, name):
    array = (np.arange(24).reshape(2, 3, 4) % 100).astype(dtype)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, array)), array)


def test_truncated_data_is_an_error_naming_file_and_sizes(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(idx_bytes(0x08, (10, 28, 28), bytes(100)))
    with pytest.raises(IDXFormatError, match=r"short-idx3-ubyte: truncated: shape \(10, 28, 28\) needs 7840"):
        read_idx(path)


def test_truncated_header_is_an_error(tmp_path):
    path = tmp_path / "header.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">I", 10))
    with pytest.raises(IDXFormatError, match="truncated header"):
        read_idx(path)


def test_truncated_gzip_stream_is_an_error(tmp_path):
    path = tmp_path / "cut.gz"
    whole = gzip.compress(idx_bytes(0x08, (1000,), bytes(range(256)) * 3 + bytes(232)))
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IDXFormatError, match=r"cut\.gz"):
        read_idx(path)


def test_trailing_bytes_are_an_error(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(0x08, (3,), bytes(5)))
    with pytest.raises(IDXFormatError, match="2 unexpected bytes"):
        read_idx(path)


def test_wrong_magic_number_is_an_error(tmp_path):
    path = tmp_path / "not-idx.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    with pytest.raises(IDXFormatError, match=r"not-idx.png: wrong magic number 0x89504e47"):
        read_idx(path)


def test_unknown_dtype_code_is_an_error(tmp_path):
    path = tmp_path / "weird.idx"
    path.write_bytes(idx_bytes(0x0A, (2,), bytes(2)))
    with pytest.raises(IDXFormatError, match="unknown dtype code 0x0A"):
        read_idx(path)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.idx"
    path.write_bytes(b"")
    with pytest.raises(IDXFormatError, match="too short"):
        read_idx(path)
