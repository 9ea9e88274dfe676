"""A shapes task whose training step misbehaves on one rank, for the DDP failure tests.

$ABLATE_TEST_FAULT = "hang:RANK:STEP" (that rank sleeps forever inside that step) or
"raise:RANK:STEP" (it raises). Used as `task._target_=faulty_task.FaultyShapes` with this folder
on PYTHONPATH, so the spawned ranks import it too.
"""
import os
import time

import torch.distributed as dist

from ablate.tasks.classification import EmbeddedClassification


class FaultyShapes(EmbeddedClassification):
    steps_run = 0

    def training_step(self, model, batch, device):
        self.steps_run += 1
        kind, rank, step = os.environ["ABLATE_TEST_FAULT"].split(":")
        if dist.get_rank() == int(rank) and self.steps_run == int(step):
            if kind == "hang":
                while True:
                    time.sleep(60)
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")
        return super().training_step(model, batch, device)
