"""The zygote: a preloaded process that forks this process's OS-process children, none of which depend on it.

Why not ``multiprocessing``'s fork server: its children are *its* children. Kill it and every one of them
dies with it (their parent-death signal fires) and their supervisor, which watched them through pipes the
fork server held, sees all of them exit at once. One SIGKILL to a helper was a full outage.

Here every child is owned by the process that supervises it:

- The zygote forks twice. The middle process exits at once, so the child is re-parented to the nearest
  "child subreaper" above it, which is the supervising process (``PR_SET_CHILD_SUBREAPER``, set before the
  first start). The child waits until ``getppid()`` is the supervisor, then sets its parent-death signal
  (SIGKILL), so it dies with the supervisor and with nothing else.
- The supervisor watches each child through a pidfd and reaps it itself (``waitpid``), so the exit reason
  (code, signal) is the kernel's, whatever happened to the zygote.
- The zygote only forks: it never sees a child's arguments. The supervisor hands the child a socket at
  fork time and writes the pickled target, arguments and file descriptors straight to it.
- The zygote is a child of the supervising process too, started with ``posix_spawn`` and restarted at once
  when it dies; starts that come while it boots again use ``spawn`` (a fresh interpreter), slower but
  independent of it. Killing it costs no request and no running process.

Reaping: each child is put in an otpserve process group (the zygote's, inherited by the children forked
from it), and the reaper only ever waits for those groups (``waitpid(-pgid)``), so it never takes the exit
status of a child that someone else started (``subprocess``, libuv). Processes re-parented to us because
their own parent died (a killed acceptor's workers) are in the same groups, so they are reaped too, not
left as zombies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["PassFd", "Reaper", "Zygote", "reaper", "set_zygote_preload", "zygote"]

log = logging.getLogger("otpserve.otp.zygote")

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
# Where a started process finds its boot socket (and a zygote its request socket).
_BOOT_FD = 3
_MAX_FDS = 16
# A child re-parented to the supervisor within this long; past it something is wrong (no subreaper).
_REPARENT_WAIT = 5.0
# An exit code of our own: the child found its supervisor gone (or never became its child) before starting.
EXIT_ORPHANED = 70
# Which otpserve process group this process and its children belong to (inherited by every child).
_GROUP_ENV = "OTPSERVE_PGID"
DEFAULT_PRELOAD = ("numpy", "otpserve.kernel", "otpserve.serving.worker")


class PassFd:
    """Marks a file descriptor among a child's arguments: the child receives it (its own number) in its place."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int | bytes) -> None:
    if sys.platform.startswith("linux") and _libc().prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children (Linux), so children the zygote forks are ours."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def process_group() -> int | None:
    """The otpserve process group this process is in, if any (children join it rather than start one)."""
    value = os.environ.get(_GROUP_ENV)
    if value is not None and value == str(os.getpgid(0)):
        return int(value)
    return None


# ---- the child's side: from boot socket to target ----------------------------------------------------------


def _die_with(supervisor: int) -> None:
    """Wait to be the supervisor's child, then die with it (SIGKILL); exit at once if it is gone."""
    deadline = time.monotonic() + _REPARENT_WAIT
    while os.getppid() != supervisor:
        if not _exists(supervisor):
            os._exit(EXIT_ORPHANED)
        if time.monotonic() > deadline:
            os.write(2, f"otpserve: pid {os.getpid()} never became a child of {supervisor}; exiting\n".encode())
            os._exit(EXIT_ORPHANED)
        time.sleep(0.0002)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:  # it died between the check and the prctl: nobody would kill us
        os._exit(EXIT_ORPHANED)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError(f"boot socket closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _child_main(boot_fd: int, supervisor: int, name: str) -> None:
    """Run a started child to its end; never returns (exit code 0, 1 on an exception, or SystemExit's)."""
    code = 1
    try:
        _die_with(supervisor)
        with contextlib.suppress(OSError):
            _prctl(_PR_SET_NAME, name.encode()[:15])
        # A Ctrl-C reaches the whole terminal; stopping children is their supervisor's job (SIGTERM, SIGKILL).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        boot = socket.socket(fileno=boot_fd)
        header, fds, _, _ = socket.recv_fds(boot, 8, _MAX_FDS)
        if len(header) < 8:
            header += _recv_exact(boot, 8 - len(header))
        payload = _recv_exact(boot, int.from_bytes(header, "little"))
        boot.close()
        cwd, target, args = _load(payload)
        with contextlib.suppress(OSError):
            os.chdir(cwd)
        args = [fds[a.fd] if isinstance(a, PassFd) else a for a in args]
        target(*args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _load(payload: bytes) -> tuple[str, Callable[..., Any], list[Any]]:
    """The supervisor's sys.path and environment come first, so the target imports and runs as it would there."""
    path, cwd, environ, rest = pickle.loads(payload)
    sys.path[:] = path
    group = os.getpgid(0)
    os.environ.clear()
    os.environ.update(environ)
    os.environ[_GROUP_ENV] = str(group)  # what this process starts joins its group
    target, args = pickle.loads(rest)
    return cwd, target, list(args)


def spawned_main() -> None:
    """Entry point of a process started with ``spawn`` (``python -c``): boot socket on fd 3."""
    supervisor, name = os.environ.pop("OTPSERVE_BOOT").split(",", 1)
    _child_main(_BOOT_FD, int(supervisor), name)


# ---- the zygote's side -------------------------------------------------------------------------------------


def zygote_main() -> None:
    """Entry point of the zygote (``python -c``): preload, say ready, fork a child per request until EOF."""
    supervisor, preload = os.environ.pop("OTPSERVE_ZYGOTE").split(",", 1)
    _zygote_loop(socket.socket(fileno=_BOOT_FD), int(supervisor), filter(None, preload.split(",")))


def _zygote_loop(sock: socket.socket, supervisor: int, preload: Iterable[str]) -> None:
    """Be the zygote: preload, say ready, fork a child per request until EOF; never returns."""
    try:
        _die_with(supervisor)
        with contextlib.suppress(OSError):
            _prctl(_PR_SET_NAME, b"otpserve-zygote")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ[_GROUP_ENV] = str(os.getpgid(0))  # every child forked from here is in this group
        for module in preload:
            try:
                __import__(module)
            except Exception as exc:  # a child that needs it imports it again and reports the error itself
                print(f"otpserve zygote: cannot preload {module}: {exc}", file=sys.stderr, flush=True)
        sock.sendall(b"R")
        while True:
            msg, fds, _, _ = socket.recv_fds(sock, 256, 1)
            if not msg:
                break  # our supervisor closed its end (or died): nothing more to start
            try:
                if len(fds) != 1:
                    raise OSError(f"a start request carries one boot socket, got {len(fds)}")
                pid = _fork_orphan(sock, fds[0], supervisor, msg.decode("utf-8", "replace"))
                sock.sendall(b"P" + pid.to_bytes(4, "little"))
            except OSError as exc:
                text = str(exc).encode()
                sock.sendall(b"E" + len(text).to_bytes(4, "little") + text)
            finally:
                for fd in fds:
                    os.close(fd)
    finally:
        os._exit(0)


def _fork_orphan(sock: socket.socket, boot_fd: int, supervisor: int, name: str) -> int:
    """Fork a child whose parent is about to exit, so the supervisor (a subreaper) becomes its parent."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                sock.close()  # the zygote's pipe to its supervisor is not the child's business
                _child_main(boot_fd, supervisor, name)
            os.write(w, pid.to_bytes(4, "little"))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 4)
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    if len(data) != 4:
        raise OSError("the zygote's fork failed (no pid came back)")
    return int.from_bytes(data, "little")


# ---- the supervisor's side ----------------------------------------------------------------------------------


class Reaper:
    """Reaps this process's otpserve children (and orphans re-parented to it) and reports each exit once."""

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self._watched: dict[int, tuple[int, asyncio.AbstractEventLoop, Callable[[int], None]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    def watch(self, pid: int, pgid: int, on_exit: Callable[[int], None]) -> None:
        """Call ``on_exit(exitcode)`` (negative: killed by that signal) on ``loop`` when child ``pid`` exits."""
        loop = asyncio.get_running_loop()
        self.groups.add(pgid)
        pidfd = os.pidfd_open(pid)
        self._watched[pid] = (pidfd, loop, on_exit)
        loop.add_reader(pidfd, self.reap)
        if self._sweep is None or self._sweep_loop is not loop:
            if self._sweep is not None:
                self._sweep.cancel()
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once a second, reap orphans that were re-parented to us (their exit wakes no pidfd of ours)."""

        def sweep() -> None:
            self._sweep = None
            self.reap()
            if self.groups and not loop.is_closed():
                self._sweep = loop.call_later(1.0, sweep)

        self._sweep_loop = loop
        self._sweep = loop.call_later(1.0, sweep)

    def reap(self) -> None:
        """Collect every exited child of our groups; report those we watch."""
        for pgid in list(self.groups):
            while True:
                try:
                    pid, status = os.waitpid(-pgid, os.WNOHANG)
                except ChildProcessError:  # no child left in that group
                    if not any(g == pgid for g in _live_groups()):
                        self.groups.discard(pgid)
                    break
                if pid == 0:
                    break
                self._report(pid, os.waitstatus_to_exitcode(status))

    def _report(self, pid: int, code: int) -> None:
        entry = self._watched.pop(pid, None)
        if entry is None:
            log.debug("reaped orphan %d (exit %d)", pid, code)
            return
        pidfd, loop, on_exit = entry
        if not loop.is_closed():
            loop.remove_reader(pidfd)
        os.close(pidfd)
        try:
            on_exit(code)
        except Exception:
            log.exception("exit callback of pid %d raised", pid)


def _live_groups() -> list[int]:
    """The groups new children go to now (ours, the zygote's), which stay watched even while empty."""
    z = _zygote
    groups = [z.pgid] if z is not None and z.pgid is not None and z._sock is not None else []
    own = process_group()
    return [*groups, own] if own is not None else groups


class Zygote:
    """The supervising process's fork server (one per process); see the module docstring."""

    def __init__(self, preload: Sequence[str] = DEFAULT_PRELOAD) -> None:
        self.preload = list(preload)
        self.pid: int | None = None
        self.pgid: int | None = None
        self.restarts = 0
        self._sock: socket.socket | None = None
        self._ready = False
        self._was_ready = False
        self._closed = False
        self._owner = os.getpid()
        self._unwatched = False  # forked before this process ran a loop: watched from its first start

    def prefork(self) -> None:
        """Fork the zygote from this process now, before it runs a loop or threads of its own.

        For a process fresh from a zygote itself (an acceptor): it has the preload already, so its own
        zygote is ready in a millisecond instead of booting an interpreter (a few hundred ms).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            _zygote_loop(theirs, supervisor, ())
        theirs.close()
        ours.recv(1)  # "R": it runs
        self._closed = False
        self.pid, self.pgid = pid, os.getpgid(0)
        self._sock, self._ready, self._was_ready = ours, True, True
        self._unwatched = True

    def start(self) -> None:
        """Start the zygote process (``posix_spawn``); it preloads, then says it is ready."""
        self._closed = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        group = process_group()
        try:
            pid = _spawn_python("zygote_main", "OTPSERVE_ZYGOTE", ",".join(self.preload), theirs, group)
        finally:
            theirs.close()
        self.pid, self.pgid = pid, group if group is not None else pid
        self._sock, self._ready = ours, False
        reaper.watch(pid, self.pgid, lambda code: self._exited(pid, code))
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable)

    def _readable(self) -> None:
        """The zygote's one unsolicited message: ``R`` once its preload is done (or EOF when it died)."""
        sock = self._sock
        assert sock is not None
        asyncio.get_running_loop().remove_reader(sock.fileno())
        with contextlib.suppress(OSError):
            if sock.recv(1) == b"R":
                self._ready = self._was_ready = True

    def _abandon(self) -> None:
        """Forget the current zygote (killed if still there); the next start starts another."""
        pid = self.pid
        self._drop_socket()
        self.pid = None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # reaped by the reaper like any child of ours

    def _drop_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock, self._ready = None, False

    def _exited(self, pid: int, code: int) -> None:
        if pid != self.pid:
            return  # one we abandoned already
        self._drop_socket()
        self.pid = None
        if self._closed or self._owner != os.getpid():
            return
        self.restarts += 1
        log.warning("the zygote exited (code %d); starting another (starts use spawn meanwhile)", code)
        with contextlib.suppress(RuntimeError):  # no running loop: the next start starts it
            self.start()

    def fork(self, name: str, boot: socket.socket) -> int | None:
        """Fork a child that boots from ``boot``; its pid, or None when the zygote cannot take it now."""
        if self._unwatched and self.pid is not None:
            pid, self._unwatched = self.pid, False
            reaper.watch(pid, self.pgid or pid, lambda code: self._exited(pid, code))
        if self._sock is None:
            self.start()
        sock = self._sock
        assert sock is not None
        if not self._ready:
            if self._was_ready:
                return None  # it is booting again after a crash: do not block the loop for it
            try:
                self._wait_ready(sock)  # the very first start: nothing is waiting on this loop yet
            except (OSError, TimeoutError) as exc:
                log.warning("the zygote did not start (%s); starting %s with spawn", exc, name)
                self._abandon()
                return None
        try:
            socket.send_fds(sock, [name.encode()], [boot.fileno()])
            sock.settimeout(10.0)
            kind = _recv_exact(sock, 1)
            if kind == b"P":
                return int.from_bytes(_recv_exact(sock, 4), "little")
            size = int.from_bytes(_recv_exact(sock, 4), "little")
            log.warning(
                "the zygote could not fork %s (%s); starting it with spawn", name, _recv_exact(sock, size).decode()
            )
            return None
        except (EOFError, OSError, TimeoutError) as exc:
            log.warning("the zygote did not answer (%s); starting %s with spawn and the zygote again", exc, name)
            self._abandon()
            return None
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(None)

    def _wait_ready(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        sock.settimeout(60.0)
        try:
            if sock.recv(1) != b"R":
                raise OSError("the zygote exited while preloading")
        finally:
            sock.settimeout(None)
        self._ready = self._was_ready = True

    def close(self) -> None:
        """Stop the zygote (EOF on its socket makes it exit); children it started live on."""
        self._closed = True
        self._drop_socket()


reaper = Reaper()
_zygote: Zygote | None = None
_preload: list[str] = list(DEFAULT_PRELOAD)


def set_zygote_preload(modules: Sequence[str]) -> None:
    """Modules the zygote imports before forking anything (takes effect when it next starts)."""
    _preload[:] = list(dict.fromkeys([*DEFAULT_PRELOAD, *modules]))
    if _zygote is not None:
        _zygote.preload = list(_preload)


def zygote() -> Zygote:
    """This process's zygote (created on first use; a forked child gets its own)."""
    global _zygote
    if _zygote is None or _zygote._owner != os.getpid():
        _zygote = Zygote(_preload)
    return _zygote


def launch(target: Callable[..., Any], args: Sequence[Any], name: str, method: str) -> tuple[int, int]:
    """Start ``target(*args)`` as a child of this process; returns its pid and process group."""
    become_subreaper()
    fds = [a.fd for a in args if isinstance(a, PassFd)]
    marked, index = [], 0
    for a in args:
        if isinstance(a, PassFd):
            marked.append(PassFd(index))
            index += 1
        else:
            marked.append(a)
    if len(fds) > _MAX_FDS:
        raise ValueError(f"a child takes at most {_MAX_FDS} file descriptors, got {len(fds)}")
    # Pickled before anything starts, so an argument that does not pickle fails here, in the caller.
    inner = pickle.dumps((target, marked), protocol=pickle.HIGHEST_PROTOCOL)
    payload = pickle.dumps((list(sys.path), os.getcwd(), dict(os.environ), inner), protocol=pickle.HIGHEST_PROTOCOL)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = zygote().fork(name, theirs) if method == "zygote" else None
        group = zygote().pgid if pid is not None else None
        if pid is None:
            pid, group = _spawn(theirs, name)
        theirs.close()
        socket.send_fds(ours, [len(payload).to_bytes(8, "little")], fds)
        ours.sendall(payload)
    finally:
        theirs.close()
        ours.close()
    assert group is not None
    return pid, group


def _spawn(boot: socket.socket, name: str) -> tuple[int, int]:
    """A fresh interpreter as a direct child, in our otpserve group (or a new one it leads)."""
    group = process_group()
    if group is None:
        z = _zygote
        group = z.pgid if z is not None and z.pgid is not None and z._sock is not None else None
    pid = _spawn_python("spawned_main", "OTPSERVE_BOOT", name, boot, group)
    return pid, group if group is not None else pid


def _spawn_python(entry: str, key: str, value: str, boot: socket.socket, group: int | None) -> int:
    """``python -c 'zygote.<entry>()'`` with ``boot`` on fd 3 and ``key=<our pid>,<value>`` in its environment,
    in process group ``group`` (a new one it leads when None)."""
    env = dict(os.environ)
    env[key] = f"{os.getpid()},{value}"
    return os.posix_spawn(
        sys.executable,
        [sys.executable, "-c", f"from otpserve.otp.zygote import {entry}; {entry}()"],
        env,
        file_actions=[(os.POSIX_SPAWN_DUP2, boot.fileno(), _BOOT_FD)],
        setpgroup=group if group is not None else 0,
    )
