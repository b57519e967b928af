"""Per-GPU tuning: the Optuna tuner (``questkern tune``) and the lookup tables it writes.

Layout (Kernel Tuner style: strategy, runner and observer are separate):

* :mod:`~questkern.configs.gpus`     GPU name normalization and ``--gpu`` checks
* :mod:`~questkern.configs.keys`     table keys, log2 buckets, distance between shapes
* :mod:`~questkern.tuning.space`    buckets and the search space, generic over the ops' own tunable
  descriptions (``questkern/ops/<op>/tunable.py``: parameters, constraints, default, build and check)
* :mod:`~questkern.tuning.runner`   build inputs, run a candidate, check it, time it
* :mod:`~questkern.tuning.strategy` Optuna samplers, studies, the trial objective
* :mod:`~questkern.tuning.observer` progress and the final report
* :mod:`~questkern.tuning.quality`  the quality objective: real-trace recall when cached, else synthetic
* :mod:`~questkern.tuning.tuner`    orchestration: buckets -> studies -> table
* :mod:`~questkern.tuning.distributed`, :mod:`~questkern.tuning.worker`, :mod:`~questkern.tuning.storage`
  several GPUs / hosts on one study: launcher, one worker process, shared storage and locks
* :mod:`~questkern.tuning.convergence`  exhaustive sweep of a bucket and trials-to-target replays
* :mod:`~questkern.configs.table`, :mod:`~questkern.configs.schema`  the JSON tables
* :mod:`~questkern.configs.runtime`  ``resolve_config``: table lookup at run time
"""

from questkern.configs.runtime import clear_cache, explain_config, resolve_config

__all__ = ["resolve_config", "explain_config", "clear_cache"]
