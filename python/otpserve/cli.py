"""The ``otpserve`` command: one subcommand per stage of the pipeline.

    otpserve train [--out DIR] [--data DIR] [--epochs N] [--seed S]   fit the reference MLP, save it
    otpserve predict MODEL FILE [--invert] [--top K]                  print the class of a .png or .npy
    otpserve serve [MODEL] [--host H] [--port P] [--isolation I] ...  serve it over HTTP (KServe v2)
    otpserve pipeline KIND --redis URL --stream NAME ...              run a pipeline on a Redis Stream

Each subcommand is a ``_add_<name>(subparsers)`` function that registers its parser and handler; heavy
imports (scikit-learn, the serving stack) happen inside the handler so ``otpserve --help`` stays fast.
Errors otpserve raises on purpose are printed as one line and exit with status 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from otpserve.errors import OtpserveError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``otpserve`` command; return its exit status (1 on an otpserve error, 2 without a command)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except (OtpserveError, OSError) as exc:
        print(f"otpserve {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The ``otpserve`` argument parser, with its train, predict and serve subcommands."""
    parser = argparse.ArgumentParser(prog="otpserve", description="Train, run and serve models the OTP way.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(subparsers)
    _add_predict(subparsers)
    _add_serve(subparsers)
    _add_pipeline(subparsers)
    return parser


# --- train -----------------------------------------------------------------------------------------------


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the reference MLP (784 → 128 ReLU → 10) and save it as an artifact",
        description="Train the reference MLP with scikit-learn. Without --data it uses the 1,797 digits "
        "scikit-learn ships (resampled to 28x28, 20%% held out, stratified); no download.",
    )
    p.add_argument("--out", type=Path, help="artifact folder to write (default: $OTPSERVE_HOME/models/mlp)")
    p.add_argument("--data", type=Path, help="folder with MNIST IDX files (train-/t10k- images and labels)")
    p.add_argument("--epochs", type=_positive_int, help="passes over the training set (default: 30 digits, 10 MNIST)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, split and order (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from otpserve.train import train

    started = time.perf_counter()
    result = train(data=args.data, out=args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    metrics = result.metrics
    print(f"data: {result.dataset.description['split']}")
    print(
        f"held-out accuracy: {metrics['heldout_accuracy']:.2%} "
        f"({round(metrics['heldout_accuracy'] * metrics['heldout_samples'])}/{metrics['heldout_samples']})"
    )
    print(f"saved: {result.path}  ({time.perf_counter() - started:.1f} s)")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _bytes(text: str) -> int:
    """A size in bytes: a number, optionally with K, M or G (powers of 1024): 512M, 2G."""
    number, unit = text.strip(), ""
    if number[-1:].upper() in ("K", "M", "G"):
        number, unit = number[:-1], number[-1].upper()
    try:
        value = int(float(number) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or a number with K, M or G)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


# --- predict ---------------------------------------------------------------------------------------------


def _add_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="print the class of an image (.png) or array (.npy)",
        description="Run MODEL on FILE and print one class per image. Images should show light ink on a dark "
        "background, as MNIST does; use --invert for dark ink on white.",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help="artifact folder (e.g. $OTPSERVE_HOME/models/mlp)")
    p.add_argument("file", type=Path, metavar="FILE", help=".png/.jpg image, or .npy array of one or more images")
    p.add_argument("--invert", action="store_true", help="invert the image first (dark ink on light background)")
    p.add_argument("--top", type=int, default=0, metavar="K", help="also print the K most likely classes")
    p.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from otpserve.models import MLP
    from otpserve.models.preprocessing import load_input_file

    model = MLP.load(args.model)
    rows = load_input_file(args.file, invert=args.invert)
    logits = model.predict(rows)
    labels = model.labels or [str(i) for i in range(model.output_shape[0])]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    for row in probabilities:
        best = int(row.argmax())
        if args.top > 0:
            top = np.argsort(row)[::-1][: args.top]
            print(labels[best] + "\t" + "  ".join(f"{labels[i]}:{row[i]:.3f}" for i in top))
        else:
            print(labels[best])
    return 0


# --- serve -----------------------------------------------------------------------------------------------


def _add_serve(subparsers) -> None:
    from otpserve.serving.options import ServingOptions

    d = ServingOptions()
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (KServe v2), batched and supervised",
        description="Serve MODEL (default: the default artifact, trained first if missing) over the KServe v2 "
        "REST API, batched by a supervised Serving.",
    )
    p.add_argument("model", nargs="?", type=Path, help="artifact folder (default: $OTPSERVE_HOME/models/mlp)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--isolation", choices=["process", "thread"], default="process", help="default: process")
    p.add_argument(
        "--acceptors",
        type=_positive_int,
        default=None,
        help="server processes sharing the port, each with its own workers (default: one per core)",
    )
    p.add_argument(
        "--partitions", type=_positive_int, default=None, help="workers per acceptor (default: cores-1, at least 1)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--batch-timeout", type=float, default=d.batch_timeout, help=f"seconds, default {d.batch_timeout}")
    p.add_argument(
        "--max-queue",
        type=_positive_int,
        default=None,
        help="rows waiting at most before 503 (default: 2 full batches per worker, which bounds queueing time)",
    )
    p.add_argument(
        "--timeout", type=float, default=d.default_timeout, help=f"default request deadline, s ({d.default_timeout})"
    )
    p.add_argument(
        "--batch-deadline",
        type=_seconds,
        default=d.batch_deadline,
        help=f"a batch running longer is a hang: its worker is killed, the batch re-run once (s, {d.batch_deadline})",
    )
    p.add_argument(
        "--max-batches",
        type=_positive_int,
        default=None,
        help="replace a worker after this many batches (default: never)",
    )
    p.add_argument(
        "--max-rss",
        type=_bytes,
        default=None,
        help="replace a worker once its resident memory passes this (bytes, or 512M, 2G; default: never)",
    )
    p.add_argument(
        "--shutdown",
        type=_seconds,
        default=d.shutdown,
        help=f"at SIGTERM, seconds to answer what was accepted before workers are killed ({d.shutdown})",
    )
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from otpserve.app import default_acceptors, run
    from otpserve.serving import ServingOptions
    from otpserve.serving.options import default_partitions

    acceptors = args.acceptors or default_acceptors()
    partitions = args.partitions or default_partitions()
    try:
        options = ServingOptions(
            isolation=args.isolation,
            partitions=partitions,
            batch_size=args.batch_size,
            batch_timeout=args.batch_timeout,
            max_queue=args.max_queue or 2 * args.batch_size * partitions,
            default_timeout=args.timeout,
            batch_deadline=args.batch_deadline,
            max_batches=args.max_batches,
            max_rss=args.max_rss,
            shutdown=args.shutdown,
        )
    except ValueError as exc:  # options that do not go together (--max-rss with --isolation thread)
        print(f"otpserve serve: error: {exc}", file=sys.stderr)
        return 2
    return run(args.model, args.host, args.port, options, acceptors)


# --- pipeline --------------------------------------------------------------------------------------------


def _add_pipeline(subparsers) -> None:
    from otpserve.pipelines.command import KINDS, PipelineCommand

    d = PipelineCommand(kind="matmul", redis="", stream="")
    p = subparsers.add_parser(
        "pipeline",
        help="run a pipeline (matmul or infer) on a Redis Stream: acked, retried, dead-lettered, exactly once",
        description="Consume NAME through a consumer group, write each result to NAME:results and each "
        "message that cannot succeed to NAME:dead (with its reason and attempts). Several processes, on one "
        "or more machines, share the stream through the group. SIGINT/SIGTERM drain and stop.",
    )
    p.add_argument("kind", choices=KINDS, metavar="KIND", help="matmul (a, b -> c) or infer (x -> y, the MLP)")
    p.add_argument("--redis", required=True, metavar="URL", help="e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--stream", required=True, metavar="NAME", help="the input stream")
    p.add_argument("--group", default=d.group, help=f"consumer group (default {d.group})")
    p.add_argument(
        "--consumer", default=None, help="consumer name (default: <host>-<slot>, stable across restarts of a slot)"
    )
    p.add_argument("--model", type=Path, default=None, help="infer: artifact folder (default: the default model)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="P", help="serve /metrics on 127.0.0.1:P")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--batch-timeout", type=float, default=d.batch_timeout, help=f"seconds, default {d.batch_timeout}")
    p.add_argument(
        "--processors", type=_positive_int, default=None, help="processor stages (default 2 matmul, 1 infer)"
    )
    p.add_argument("--max-attempts", type=_positive_int, default=d.max_attempts, help=f"default {d.max_attempts}")
    p.add_argument(
        "--claim-idle",
        type=float,
        default=d.claim_idle,
        help=f"seconds before a dead consumer's entries are reclaimed (default {d.claim_idle:g})",
    )
    p.add_argument(
        "--shutdown", type=float, default=d.shutdown, help=f"seconds to drain at stop (default {d.shutdown:g})"
    )
    p.add_argument("--durable", action="store_true", help="refuse to start unless Redis persists acks (AOF on)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.set_defaults(handler=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    import logging

    import uvloop

    from otpserve.pipelines.command import PipelineCommand, run

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cmd = PipelineCommand(
        kind=args.kind,
        redis=args.redis,
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        model=args.model,
        metrics_port=args.metrics_port,
        batch_size=args.batch_size,
        batch_timeout=args.batch_timeout,
        processors=args.processors,
        max_attempts=args.max_attempts,
        claim_idle=args.claim_idle,
        shutdown=args.shutdown,
        durable=args.durable,
        progress=False if args.no_progress else None,
    )
    try:
        return uvloop.run(run(cmd))  # the serve command's loop too
    except Exception as exc:
        root = exc
        while root.__cause__ is not None:  # a supervisor's ChildStartError wraps what went wrong
            root = root.__cause__
        from redis.exceptions import RedisError

        if isinstance(root, (RedisError, OtpserveError, OSError, ValueError)):
            print(f"otpserve pipeline: error: {type(root).__name__}: {root} (redis {args.redis})", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
