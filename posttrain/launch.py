"""Start a training stage as params.yaml's `launch` section says.

    PYTHONPATH=. python -m posttrain.launch stages/sft.py [stage arguments]

replaces itself (os.execvp: signals and the exit status pass straight through) with
- `python stages/sft.py` for launch.processes 1 and no launch.config_file;
- otherwise `accelerate launch --config_file F --num_processes N stages/sft.py`, F being
  launch.config_file or, by default, configs/accelerate/ddp.yaml (data parallel).
Accelerate's torchrun launcher starts the N processes; the stages' Trainer joins them
over NCCL on GPUs, or over gloo on a machine without one (DDP only: FSDP and ZeRO-3
need GPUs). `accelerate launch --cpu` is not used: it starts one process unless MPI
is set up. Only params are read here; nothing heavy is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from posttrain.config import PARAMS_FILE, LaunchParams, load_params

# Always an explicit config: never the user's ~/.cache/huggingface/accelerate default.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "accelerate" / "ddp.yaml"


def command(launch: LaunchParams, script: str, arguments: list[str], python: str = sys.executable) -> list[str]:
    """The command line that runs `script` as `launch` says (pure: nothing is checked or run)."""
    if launch.processes == 1 and launch.config_file is None:
        return [python, script, *arguments]
    return [python, "-m", "accelerate.commands.launch", "--config_file", launch.config_file or str(DEFAULT_CONFIG),
            "--num_processes", str(launch.processes), script, *arguments]


def main(argv: list[str]) -> None:
    if not argv or not argv[0].endswith(".py"):
        raise SystemExit("usage: python -m posttrain.launch stages/<stage>.py [arguments]")
    launch = load_params().launch
    if launch.config_file is not None and not Path(launch.config_file).is_file():
        raise SystemExit(f"{PARAMS_FILE}: launch.config_file: no such file {launch.config_file!r} "
                         f"(relative to {Path.cwd()})")
    cmd = command(launch, argv[0], argv[1:])
    if cmd[1:] != argv:  # through accelerate: say how
        print("launch:", " ".join(cmd), file=sys.stderr, flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
