"""Stage runs for the tests, forked from a process that has imported the heavy libraries.

A stage started as `python stages/<stage>.py ...` spends 10-20 s importing torch,
transformers, PEFT and TRL before it reads its params; the suite starts stages about a
hundred times. Here a multiprocessing fork server imports them once (per pytest worker)
and every stage run is a child forked from it that runs the real script as `python`
would: its own argv, working directory and environment, sys.path[0] the script's
folder, stdout and stderr to files, exit code from SystemExit, an uncaught exception
through sys.excepthook (the stages' one-line UserError report), atexit handlers at the end.

What a fresh interpreter does differently cannot be seen from here (e.g. whether torch
was imported before the params check): the tests of that run the script in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOADED = ["torch", "transformers", "peft", "trl", "datasets", "accelerate", "safetensors", "mlflow"]


def _run_script(script: str, args: list[str], cwd: str, env: dict, stdout_path: str, stderr_path: str) -> None:
    import atexit
    import runpy

    sys.stdout.flush()
    sys.stderr.flush()
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [script, *args]
    python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [str(Path(script).parent), *python_path, *(p for p in sys.path if p and p not in python_path)]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except BaseException:
        sys.excepthook(*sys.exc_info())
        raise SystemExit(1) from None
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()


_context = None


def _forkserver():
    global _context
    if _context is None:
        import multiprocessing.forkserver

        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOADED)
        # One thread in the server: the children set their own (POSTTRAIN_THREADS), and an
        # OpenMP pool started before a fork would hang the child.
        before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if before is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = before
    return _context


def run(command: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`subprocess.run(command, cwd, env, capture_output=True, text=True, timeout)` for a
    command `[python, script, *args]`, in a child of the fork server."""
    _python, script, *args = command
    with tempfile.TemporaryDirectory() as scratch:
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        child = _forkserver().Process(target=_run_script, args=(script, args, str(cwd), env, str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout, out.read_text(errors="replace"),
                                            err.read_text(errors="replace"))
        return subprocess.CompletedProcess(command, child.exitcode, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))
