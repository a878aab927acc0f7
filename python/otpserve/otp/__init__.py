"""otpserve.otp — layer 4: OTP processes and supervision over asyncio tasks and OS processes.

The names are OTP's where the semantics match (see docs/otp.md for the mapping):

- ``GenServer`` — a server task with ``call`` (with timeout) / ``cast`` / ``handle_info``, named registration.
- ``Supervisor`` — one_for_one / one_for_all / rest_for_one; permanent / transient / temporary children;
  max_restarts in max_seconds, past which it stops its children and exits (escalation to its parent).
- ``DynamicSupervisor`` — children started on demand, ``max_children``.
- ``ChildSpec`` — how to start a child: an asyncio task (``ChildSpec.task``), an OS process
  (``ChildSpec.process``, built on the public ``start_process``), a GenServer or a supervisor
  (``X.child_spec``).

Supervisors emit ``otpserve.telemetry`` events ``("otpserve", "supervisor", "child", "started" | "exited" |
"restarted")`` and ``("otpserve", "supervisor", "escalated")``.
"""

from .child import Child, ChildSpec, TaskChild, start_task
from .dynamic_supervisor import DynamicSupervisor
from .errors import (
    AlreadyRegistered,
    CallTimeout,
    ChildNotFound,
    ChildRunning,
    ChildStartError,
    MaxChildrenReached,
    NoProc,
    OTPError,
    ServerExited,
)
from .genserver import Caller, GenServer, NoReply, Stop
from .process import PassFd, ProcessChild, start_process
from .reason import ExitReason
from .registry import registered, whereis
from .restart import Backoff, RestartIntensity
from .supervision import ChildInfo
from .supervisor import Supervisor

__all__ = [
    "AlreadyRegistered",
    "Backoff",
    "CallTimeout",
    "Caller",
    "Child",
    "ChildInfo",
    "ChildNotFound",
    "ChildRunning",
    "ChildSpec",
    "ChildStartError",
    "DynamicSupervisor",
    "ExitReason",
    "GenServer",
    "MaxChildrenReached",
    "NoProc",
    "NoReply",
    "OTPError",
    "PassFd",
    "ProcessChild",
    "RestartIntensity",
    "ServerExited",
    "Stop",
    "Supervisor",
    "TaskChild",
    "registered",
    "start_process",
    "start_task",
    "whereis",
]
