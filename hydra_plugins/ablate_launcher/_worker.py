"""The process of one job started by ``hydra/launcher=local``.

    python -m hydra_plugins.ablate_launcher._worker <payload.pkl> <return.pkl>

Unpickles what the launcher wrote (Hydra context, task function, the job's config and Hydra's
singleton state), runs the job with Hydra's ``run_job`` and pickles the ``JobReturn`` back,
atomically. A process that dies before that leaves no return file, and the launcher reports how
it died. (Hydra's plugin scan skips this module: its name starts with an underscore.)
"""
from __future__ import annotations

import pickle
import sys
import traceback
from pathlib import Path
from typing import List

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals

from ablate import atomic


def main(argv: List[str]) -> None:
    payload, result = (Path(arg) for arg in argv)
    with open(payload, "rb") as handle:
        parent_path, body = pickle.load(handle)
    # Import what the parent imported, from where it imported it (e.g. modules beside run.py).
    sys.path[:0] = [entry for entry in parent_path if entry not in sys.path]
    hydra_context, task_function, config, singleton_state = cloudpickle.loads(body)
    Singleton.set_state(singleton_state)
    setup_globals()
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    if ret.status == JobStatus.FAILED:
        # run_job caught it; the traceback does not survive pickling, so it goes to stderr.log.
        traceback.print_exception(ret._return_value, file=sys.stderr)
    _write_return(ret, result)


def _write_return(ret: JobReturn, result: Path) -> None:
    try:
        body = cloudpickle.dumps(ret)
    except Exception as error:  # e.g. a return value or exception holding a lock or a socket
        ret.status = JobStatus.FAILED
        ret.return_value = RuntimeError(f"the job's outcome could not be pickled back to the launcher: {error!r}")
        body = cloudpickle.dumps(ret)
    atomic.write(result, body)


if __name__ == "__main__":
    main(sys.argv[1:])
