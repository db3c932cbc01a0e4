"""Workers die with their launcher. A torchrun worker asks the kernel for SIGKILL when its parent
(the launcher) dies (prctl PR_SET_PDEATHSIG), and so do its children: those it forks (an at-fork
hook) and those multiprocessing spawns (Megatron's checkpoint writers: a spawned child imports
the worker's main module, megatron_ext.train, which imports this module, and the environment
names the guarded parent). A killed launcher or worker leaves nothing running that could finish
a checkpoint alone or race a rerun."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
GUARDED_PARENT = "PARAMVISION_GUARDED_PARENT"  # pid of a process whose children die with it
_installed = False


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(128 + signal.SIGKILL)


def _forked_child(parent: int) -> None:
    try:
        _die_with_parent(parent)
    except OSError:
        pass  # a child without the guard still works; it only outlives a killed worker


def die_with_launcher() -> bool:
    """In this process and in the children it forks from now on (Linux; elsewhere a no-op).
    Returns whether the guard is active. Only for processes a launcher started (torchrun): a run
    started from a shell must survive that shell."""
    global _installed
    if not sys.platform.startswith("linux"):
        return False
    if _installed:
        return True
    _die_with_parent(os.getppid())
    me = os.getpid()
    os.environ[GUARDED_PARENT] = str(me)
    os.register_at_fork(after_in_child=lambda: _forked_child(me) if os.getppid() == me else None)
    _installed = True
    return True


def _spawned_child_of_guarded_parent() -> None:
    """At import: a child spawned (fork + exec) by a guarded worker takes the guard too."""
    owner = os.environ.get(GUARDED_PARENT, "")
    if sys.platform.startswith("linux") and owner.isdigit() and int(owner) == os.getppid():
        _forked_child(int(owner))


_spawned_child_of_guarded_parent()


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def child_dies_with_me() -> None:
    """preexec_fn for subprocess.Popen: the child gets SIGTERM when this process dies (torchrun
    then stops its workers itself)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def loopback_rendezvous() -> list:
    """torchrun arguments for a single-node run whose rendezvous clients use 127.0.0.1 (instead of
    --standalone's name lookup of localhost). Note: torch's TCPStore server still listens on
    every interface (measured, torch 2.13); see README "Security"."""
    import socket
    import uuid

    with socket.socket() as s:  # a free port; the tiny race with another binder is acceptable here
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ["--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id={uuid.uuid4().hex}"]
