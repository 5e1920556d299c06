"""Runs `tfpg ARGS...` and SIGKILLs itself the moment `state.json` commits an epoch.

    python kill_after_epoch.py PHASE EPOCHS ARGS...

PHASE is "pretrain" or "finetune": right after the run state is saved with
`PHASE_epochs_done == EPOCHS` (the commit of that epoch's checkpoint), the process
sends itself SIGKILL, so the kill lands at an exact, repeatable moment (no polling
race) and nothing of Python's clean-up runs. Exits with tfpg's status if the run
never got there.
"""

import os
import signal
import sys

from tfpg.run import checkpoints
from tfpg.run.cli import main


def kill_after(phase, epochs):
    save = checkpoints.RunState.save

    def save_then_die(self, **updates):
        save(self, **updates)
        if updates.get(f"{phase}_epochs_done") == epochs:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.RunState.save = save_then_die


if __name__ == "__main__":
    kill_after(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
