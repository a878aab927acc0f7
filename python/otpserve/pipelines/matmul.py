"""The reference exercise: matrix products through the Rust kernel in a pipeline fed by a Redis Stream.

Input entries carry ``a`` and ``b`` as JSON nested lists of numbers, or in the reference's flat form
(``a``, ``a_rows``, ``a_cols``, ``b``, ``b_rows``, ``b_cols``, each matrix a flat JSON list in row-major
order). ``handle_message`` parses and checks them (bad JSON, ragged rows, a flat list of the wrong length:
a ``ValueError`` naming it, so a dead letter at once); the batch processor multiplies each pair with
``kernel.matmul`` in a thread (the kernel releases the GIL), in float64 so the result is numpy's; a
mismatched pair fails alone with the kernel's message. The result's fields: ``c`` (JSON nested lists).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from otpserve import kernel
from otpserve.flow import Message, Pipeline


def _matrix(fields: dict[str, bytes], name: str) -> np.ndarray:
    raw = fields.get(name)
    if raw is None:
        raise ValueError(
            f"field {name!r} is missing (give {name} as JSON nested lists, or flat with {name}_rows/{name}_cols)"
        )
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"field {name!r} is not JSON: {exc}") from None
    rows_field, cols_field = fields.get(f"{name}_rows"), fields.get(f"{name}_cols")
    if rows_field is not None or cols_field is not None:
        if rows_field is None or cols_field is None:
            raise ValueError(f"flat form needs both {name}_rows and {name}_cols")
        try:
            rows, cols = int(rows_field), int(cols_field)
        except ValueError:
            raise ValueError(
                f"{name}_rows and {name}_cols must be integers, got {rows_field!r}, {cols_field!r}"
            ) from None
        flat = _numbers(value, name)
        if flat.ndim != 1 or flat.size != rows * cols:
            raise ValueError(
                f"{name} has {flat.size} numbers but {name}_rows x {name}_cols = {rows} x {cols} = {rows * cols}"
            )
        return flat.reshape(rows, cols)
    matrix = _numbers(value, name)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a matrix (nested lists of numbers), got {matrix.ndim} dimension(s)")
    return matrix


def _numbers(value: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{name} must hold numbers in rows of equal length") from None
    return array


class MatmulPipeline(Pipeline):
    """``c = a @ b`` for every entry, through the kernel; bad input to the dead letters with its reason."""

    def handle_message(self, processor: str, message: Message, context: Any) -> Message:
        """Parse ``a`` and ``b``; any problem is a ValueError, which is not retried."""
        fields = message.data
        return message.update_data((_matrix(fields, "a"), _matrix(fields, "b")))

    async def handle_batch(self, batcher: str, messages: list[Message], batch_info: Any, context: Any) -> list[Message]:
        """Multiply each pair in a thread; a pair whose shapes do not fit fails alone, with the kernel's message."""
        await asyncio.to_thread(_multiply_all, messages)
        return messages


def _multiply_all(messages: list[Message]) -> None:
    for message in messages:
        a, b = message.data
        try:
            c = kernel.matmul(a, b)
        except ValueError as exc:
            message.failed(exc)
            continue
        message.update_data({"c": orjson.dumps(c, option=orjson.OPT_SERIALIZE_NUMPY)})
