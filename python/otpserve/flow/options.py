"""The pipeline's options: one schema that validates, fills defaults and documents (Broadway's NimbleOptions).

Names and defaults are Broadway's (``lib/broadway/options.ex``), with one change of unit: times are
seconds, as everywhere in otpserve (Broadway's ``batch_timeout: 1000`` ms is ``1.0`` here, its
``shutdown: 30_000`` ms is ``30.0``). A bad option raises ``PipelineOptionsError`` naming the key's path,
what was expected and what was given; an unknown key names the allowed ones. ``docs()`` renders the same
schema as the table in docs/flow.md, and a test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from otpserve.errors import OtpserveError

__all__ = ["PipelineOptionsError", "docs", "validate"]


class PipelineOptionsError(OtpserveError, ValueError):
    """A pipeline option is unknown or has a bad value; the message names its path and the allowed values."""


@dataclass(frozen=True)
class Opt:
    """One option: a check (returns an error text or None), a default (a callable for computed ones), a doc."""

    check: Callable[[Any], str | None]
    default: Any = None
    doc: str = ""
    required: bool = False
    keys: Mapping[str, Opt] | None = None  # a nested keyword list
    each: Mapping[str, Opt] | None = None  # a map of names to nested keyword lists (batchers)


def _pos_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "a positive integer"


def _nonneg_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "a non-negative integer"


def _seconds(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
    return None if ok else "a number of seconds >= 0"


def _pos_seconds(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
    return None if ok else "a number of seconds > 0"


def _one_of(*allowed: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else "one of " + ", ".join(repr(a) for a in allowed)


def _callable_or_none(v: Any) -> str | None:
    return None if v is None or callable(v) else "a function or None"


def _mapping(v: Any) -> str | None:
    return None if isinstance(v, Mapping) else "a keyword mapping (dict)"


def _anything(v: Any) -> str | None:
    return None


def _default_concurrency() -> int:
    return 2 * (os.cpu_count() or 1)  # Broadway's System.schedulers_online() * 2


PROCESSOR = {
    "concurrency": Opt(_pos_int, _default_concurrency, "processor stages (default: 2 x cores, as Broadway)"),
    "min_demand": Opt(_nonneg_int, 5, "a processor asks again once it holds this few"),
    "max_demand": Opt(_pos_int, 10, "events a processor asks its producers for at most"),
    "isolation": Opt(
        _one_of("task", "process"),
        "task",
        "'task': an asyncio task in this process; 'process': handle_message runs in a supervised OS "
        "process per processor, so CPU-bound Python handlers use every core",
    ),
}

BATCHER = {
    "batch_size": Opt(_pos_int, 100, "messages in a batch at most"),
    "batch_timeout": Opt(_seconds, 1.0, "seconds a batch waits for more, from its first message"),
    "concurrency": Opt(_pos_int, 1, "batch processor stages of this batcher"),
    "max_demand": Opt(_pos_int, None, "messages the batcher asks processors for (default: batch_size)"),
    "partition_by": Opt(_callable_or_none, None, "fn(message) -> int: the batch processor a message goes to"),
}

RATE_LIMITING = {
    "allowed_messages": Opt(_pos_int, None, "messages the producers may emit in one interval", required=True),
    "interval": Opt(_pos_seconds, None, "seconds of one interval", required=True),
}

PRODUCER = {
    "module": Opt(
        lambda v: None if callable(v) else "a producer class or factory",
        None,
        "the producer: a class (or factory) taking the producer's options, e.g. RedisStreamProducer",
        required=True,
    ),
    "options": Opt(_mapping, dict, "keyword options given to the producer"),
    "concurrency": Opt(_pos_int, 1, "producer stages"),
    "rate_limiting": Opt(_mapping, None, "limit what all producers emit together", keys=RATE_LIMITING),
}

PIPELINE = {
    "name": Opt(lambda v: None if isinstance(v, str) and v else "a non-empty string", "pipeline", "the name"),
    "producer": Opt(_mapping, None, "the producer", required=True, keys=PRODUCER),
    "processors": Opt(_mapping, None, "processor groups (one, named default)", required=True, each=PROCESSOR),
    "batchers": Opt(_mapping, dict, "named batchers", each=BATCHER),
    "context": Opt(_anything, None, "passed to every callback"),
    "shutdown": Opt(_seconds, 30.0, "seconds a graceful stop may take to drain before stages are killed"),
    "max_restarts": Opt(_nonneg_int, 3, "restart intensity of the pipeline's supervisor"),
    "max_seconds": Opt(_pos_seconds, 5.0, "within this many seconds"),
}


def _fill(path: str, given: Mapping[str, Any], schema: Mapping[str, Opt]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(schema))
    if unknown:
        where = f" in {path}" if path else ""
        raise PipelineOptionsError(
            f"unknown pipeline option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{where}; "
            f"allowed: {', '.join(schema)}"
        )
    out: dict[str, Any] = {}
    for key, opt in schema.items():
        full = f"{path}.{key}" if path else key
        if key not in given:
            if opt.required:
                raise PipelineOptionsError(f"required pipeline option {full} is missing ({opt.doc})")
            value = opt.default() if callable(opt.default) else opt.default
            if value is None:
                out[key] = None
                continue
        else:
            value = given[key]
        problem = opt.check(value)
        if problem is not None:
            raise PipelineOptionsError(f"invalid pipeline option {full}: expected {problem}, got {value!r}")
        if opt.keys is not None:
            value = _fill(full, value, opt.keys)
        elif opt.each is not None:
            value = {
                name: _fill(f"{full}.{name}", _mapping_of(f"{full}.{name}", v), opt.each) for name, v in value.items()
            }
        out[key] = value
    return out


def _mapping_of(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PipelineOptionsError(f"invalid pipeline option {path}: expected a keyword mapping (dict), got {value!r}")
    return value


def validate(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options with every default filled in, or PipelineOptionsError naming the first bad one."""
    opts = _fill("", options, PIPELINE)
    if list(opts["processors"]) != ["default"]:
        raise PipelineOptionsError(
            "invalid pipeline option processors: expected exactly one group named default, "
            f"got {list(opts['processors'])!r}"
        )
    for path, group in [("processors.default", opts["processors"]["default"])] + [
        (f"batchers.{name}", b) for name, b in opts["batchers"].items()
    ]:
        max_demand = group.get("max_demand") or group.get("batch_size")
        min_demand = group.get("min_demand")
        if min_demand is not None and min_demand >= max_demand:
            raise PipelineOptionsError(
                f"invalid pipeline option {path}.min_demand: expected less than max_demand={max_demand}, "
                f"got {min_demand!r}"
            )
    for batcher in opts["batchers"].values():
        if batcher["max_demand"] is None:
            batcher["max_demand"] = batcher["batch_size"]
    return opts


def docs() -> str:
    """The options as a Markdown table (docs/flow.md holds this text; a test keeps them equal)."""
    rows = ["| option | default | what |", "|---|---|---|"]

    def walk(prefix: str, schema: Mapping[str, Opt]) -> None:
        for key, opt in schema.items():
            name = f"{prefix}{key}"
            if opt.required:
                default = "required"
            elif callable(opt.default):
                default = "2 × cores" if opt.default is _default_concurrency else "{}"
            else:
                default = "—" if opt.default is None else repr(opt.default)
            rows.append(f"| `{name}` | {default} | {opt.doc} |")
            if opt.keys is not None:
                walk(f"{name}.", opt.keys)
            if opt.each is not None:
                walk(f"{name}.NAME." if key == "batchers" else f"{name}.default.", opt.each)

    walk("", PIPELINE)
    return "\n".join(rows) + "\n"
