"""A processor's OS process: runs ``prepare_messages``/``handle_message`` off the event loop's core.

The processor stage sends a chunk of messages (their data, metadata, batcher, batch_key and status, pickled;
never the acknowledger) over a pipe; the worker rebuilds them, runs ``run_handlers`` and sends back what the
handlers changed. The stage keeps its own Message objects and copies the changes in, so acknowledgers never
cross the pipe. The worker is a child of ``start_process`` (the OTP core's process child: it dies with us);
EOF on the pipe means it died, which the stage reports as a crash.

The pipeline's callbacks run on a bare instance of its class made in the worker (``cls.__new__``): in
process isolation a handler sees its arguments and ``context``, not state set on the pipeline object.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
from multiprocessing.connection import Connection
from typing import Any

from otpserve.errors import WorkerCrashed
from otpserve.flow.message import Message
from otpserve.otp.process import PassFd, ProcessChild, start_process


class _NoAck:
    def ack(self, ref: Any, successful: list[Message], failed: list[Message]) -> None:
        raise RuntimeError("messages are acked by the processor stage, not inside its worker")


def _portable(reason: Any) -> Any:
    """The failure reason if it pickles, else a RuntimeError naming it."""
    try:
        pickle.dumps(reason)
        return reason
    except Exception:
        return RuntimeError(f"{type(reason).__name__}: {reason}")


def worker_main(pipeline_class: type, context: Any, conn_fd: int, name: str) -> None:
    """Handle chunks until the pipe closes."""
    from otpserve.flow.topology.callbacks import run_handlers

    conn = Connection(conn_fd)
    pipeline = pipeline_class.__new__(pipeline_class)
    noack = (_NoAck(), None, None)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        chunk, batchers = pickle.loads(payload)
        messages = []
        for data, metadata, batcher, batch_key, status in chunk:
            message = Message(data, noack, metadata, batcher, batch_key)
            message.status = status
            messages.append(message)
        run_handlers(pipeline, name, messages, context, batchers=batchers)
        out = []
        for m in messages:
            status = m.status if m.status == "ok" else ("failed", _portable(m.status[1]))
            out.append((m.data, m.metadata, m.batcher, m.batch_key, status))
        try:
            reply = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a handler put something unpicklable in data: fail those messages
            reply = pickle.dumps(
                [
                    (None, meta, b, k, ("failed", RuntimeError(f"result does not pickle: {exc}")))
                    for _, meta, b, k, _ in out
                ]
            )
        conn.send_bytes(reply)


class ProcessorWorker:
    """The stage's side of a worker: ``await run(messages)`` returns when the handlers are done."""

    def __init__(self, child: ProcessChild, conn: Connection, batchers: list[str] | None) -> None:
        self.child = child
        self.conn = conn
        self.batchers = batchers

    @classmethod
    async def start(
        cls, pipeline_class: type, context: Any, name: str, batchers: list[str] | None = None
    ) -> ProcessorWorker:
        """Start the worker process for processor ``name``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            child = start_process(worker_main, (pipeline_class, context, PassFd(theirs.fileno()), name), name=name)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(child, Connection(ours.detach()), batchers)

    async def run(self, messages: list[Message]) -> None:
        """Run the handlers on ``messages`` in the worker; copy the results into them."""
        chunk = [(m.data, m.metadata, m.batcher, m.batch_key, m.status) for m in messages]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        fd = self.conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            try:
                fut.set_result(self.conn.recv_bytes())
            except (EOFError, OSError) as exc:
                fut.set_exception(exc)

        try:
            self.conn.send_bytes(pickle.dumps((chunk, self.batchers), protocol=pickle.HIGHEST_PROTOCOL))
            loop.add_reader(fd, readable)
            try:
                payload = await fut
            finally:
                loop.remove_reader(fd)
        except (EOFError, OSError) as exc:
            reason = await self.child.wait()
            raise WorkerCrashed(
                f"processor worker {self.child.name} died ({reason}) running {len(messages)} messages"
            ) from exc
        for message, (data, metadata, batcher, batch_key, status) in zip(messages, pickle.loads(payload), strict=True):
            message.data, message.metadata, message.batcher, message.batch_key, message.status = (
                data,
                metadata,
                batcher,
                batch_key,
                status,
            )

    def kill(self) -> None:
        """Kill the worker and close the pipe."""
        self.child.kill()
        try:
            self.conn.close()
        except OSError:
            pass
