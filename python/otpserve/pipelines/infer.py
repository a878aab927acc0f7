"""``otpserve pipeline infer``: the MLP over a Redis Stream, the batcher calling a supervised ``Serving``.

Input entries carry ``x``, a JSON list of the model's 784 numbers, or ``x_f32``, the same as raw
little-endian float32 bytes (3,136 of them). ``handle_message`` checks each (a wrong length or bad JSON is a
ValueError naming it: a dead letter at once) and keeps the row; the batch processor stacks a batch's rows and
runs them through the ``Serving`` (process isolation: a crash in the model is a worker restart and a re-run,
not a lost batch). Results: ``y``, the logits as a JSON list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from otpserve.flow import Message, Pipeline


def decode_row(fields: dict[str, bytes], width: int) -> np.ndarray:
    """The input row of one entry, as float32 of length ``width``; ValueError naming what is wrong."""
    raw = fields.get("x_f32")
    if raw is not None:
        if len(raw) != 4 * width:
            raise ValueError(f"x_f32 has {len(raw)} bytes; the model takes {width} float32 values ({4 * width} bytes)")
        return np.frombuffer(raw, dtype="<f4")
    raw = fields.get("x")
    if raw is None:
        raise ValueError("field 'x' (JSON list of numbers) or 'x_f32' (raw little-endian float32) is missing")
    try:
        row = np.asarray(orjson.loads(raw), dtype=np.float32)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"field 'x' is not JSON: {exc}") from None
    except (ValueError, TypeError):
        raise ValueError("field 'x' must be a list of numbers") from None
    if row.shape != (width,):
        raise ValueError(f"x has shape {row.shape}; the model takes ({width},)")
    return row


class InferPipeline(Pipeline):
    """Logits for every entry; ``context`` is ``{"serving": Serving, "width": 784}``."""

    def handle_message(self, processor: str, message: Message, context: Any) -> Message:
        """Decode and check the row."""
        return message.update_data(decode_row(message.data, context["width"]))

    async def handle_batch(self, batcher: str, messages: list[Message], batch_info: Any, context: Any) -> list[Message]:
        """One Serving run for the whole batch; its outputs become the results."""
        x = np.stack([m.data for m in messages])
        y = await context["serving"].run(x, timeout=context.get("timeout"))
        for message, row in zip(messages, y, strict=True):
            message.update_data({"y": orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)})
        return messages
