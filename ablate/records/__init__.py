"""The record: one `result.json` per job, the only link between the jobs and the analysis.

    schema.py    the typed record (`Record` and its blocks), its version and validation on read;
                 docs/record.md's table and docs/record.schema.json are generated from it
    identity.py  which config keys name a cell (run_id) and its flat factors
    store.py     the cell folder: the lock, the previous record, history/, the atomic write
    tuning.py    the tuner's summary (tuning.json) that the report's tuning section reads

Imports neither torch nor any other ablate stage, so the analysis can stand on it alone.
"""
from ablate.records.identity import (ADDED_SETTINGS, NON_SEMANTIC_KEYS, factors, override_parts,
                                     predated_settings, run_id, semantic_config, size_str)
from ablate.records.schema import (NUMERIC_COST, RECORD_KEYS, SCHEMA, STANDARD_FACTORS, STATUSES, TASK_KINDS,
                                   Cost, CurveSummary, Env, ErrorInfo, FamilyFacts, Init, Record, SetAside,
                                   Status, TaskInfo, Tuning, validate)
from ablate.records.store import (CHECKPOINT_FILE, CURVE_FILE, RESULT_FILE, CellStore, code_version, read,
                                  staleness, write_json_atomic)

__all__ = [
    "ADDED_SETTINGS", "NON_SEMANTIC_KEYS", "factors", "override_parts", "predated_settings", "run_id",
    "semantic_config", "size_str", "NUMERIC_COST", "RECORD_KEYS", "SCHEMA", "STANDARD_FACTORS", "STATUSES",
    "TASK_KINDS", "Cost", "CurveSummary", "Env", "ErrorInfo", "FamilyFacts", "Init", "Record", "SetAside",
    "Status", "TaskInfo", "Tuning", "validate", "CHECKPOINT_FILE", "CURVE_FILE", "RESULT_FILE", "CellStore",
    "code_version", "read", "staleness", "write_json_atomic",
]
