"""What a Redis restart can lose, read from the server at start (the project's shared PIPELINES.md, §2.1).

With ``appendonly no`` (Redis's default) a crash of redis-server loses every XACK since the last RDB
snapshot: the group comes back behind, and that many messages are delivered again. With AOF and
``appendfsync everysec`` a crash of the process loses nothing written (the write happens before the reply)
and an OS crash about a second. ``check_durability`` reads the settings, warns when acks can be lost, and
refuses to start a ``durable=True`` pipeline then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from otpserve.errors import OtpserveError

__all__ = ["Durability", "NotDurable", "check_durability"]

log = logging.getLogger("otpserve.flow.redis")


class NotDurable(OtpserveError, RuntimeError):
    """``durable=True`` and the server's persistence can lose acknowledged writes on a restart."""


@dataclass(frozen=True)
class Durability:
    """The server's persistence settings and what they mean for a pipeline."""

    appendonly: str | None
    appendfsync: str | None
    version: str

    @property
    def acks_survive_restart(self) -> bool | None:
        """True with AOF on; None when the server would not tell (CONFIG disabled)."""
        if self.appendonly is None:
            return None
        return self.appendonly == "yes"

    def describe(self) -> str:
        """One line for logs and errors."""
        if self.appendonly is None:
            return f"Redis {self.version}: persistence settings unreadable (CONFIG GET refused)"
        return f"Redis {self.version}: appendonly {self.appendonly}, appendfsync {self.appendfsync}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def check_durability(redis: Any, durable: bool) -> Durability:
    """Read the server's version and persistence; warn (or, if ``durable``, raise NotDurable) when a
    restart of redis-server can lose acks."""
    info = await redis.info("server")
    version = _text(info.get("redis_version", "unknown"))
    try:
        config = {_text(k): _text(v) for k, v in (await redis.config_get("append*")).items()}
        found = Durability(config.get("appendonly"), config.get("appendfsync"), version)
    except Exception as exc:  # CONFIG renamed or forbidden (managed Redis): say so, do not guess
        log.debug("CONFIG GET failed: %s", exc)
        found = Durability(None, None, version)
    if found.acks_survive_restart:
        return found
    why = (
        f"{found.describe()}: a restart of redis-server can lose acknowledgements (those messages are then "
        "delivered again); turn AOF on (appendonly yes, appendfsync everysec)"
    )
    if durable:
        raise NotDurable(f"durable=True refused: {why}")
    log.warning("%s", why)
    return found
