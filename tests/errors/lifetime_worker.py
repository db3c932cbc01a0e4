"""A stand-in for a torchrun worker (tests/errors/test_lifetime.py): takes the same guard as
megatron_ext.train's main(), starts two children the ways Megatron's checkpoint writers are
started (multiprocessing 'fork' and 'spawn'), writes the pids, then waits to be killed."""
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pvcommon import lifetime  # noqa: E402


def writer(pid_file):
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)


if __name__ == "__main__":
    out = sys.argv[1]
    if os.environ.get("NO_GUARD") != "1" and lifetime.launched_by_torchrun():
        lifetime.die_with_launcher()
    rank = os.environ.get("RANK", "0")
    children = [mp.get_context("fork").Process(target=writer, args=(f"{out}/writer-{rank}.pid",)),
                mp.get_context("spawn").Process(target=writer, args=(f"{out}/spawned-{rank}.pid",))]
    for child in children:
        child.start()
    with open(f"{out}/worker-{rank}.pid", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
