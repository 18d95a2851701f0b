"""Stopping the servers that fixtures start (vllm serve, Label Studio) in their own process sessions."""

import os
import signal
import subprocess


def stop_session(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the process group of a server started with `start_new_session=True` (the server and its
    workers, nothing else), then SIGKILL what is left after `grace_s`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
