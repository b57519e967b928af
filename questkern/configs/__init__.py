"""Config choice below both the runtime API and the tuner: table keys (:mod:`.keys`), the table
format and its schema (:mod:`.table`, :mod:`.schema`), where tables live (:mod:`.paths`), GPU
names (:mod:`.gpus`) and the runtime lookup (:mod:`.runtime`: ``resolve_config``). The config
dataclasses and heuristics are in :mod:`questkern.config`; the shipped tables in
``questkern/tuning/tables/``."""
