"""The run result's schema, kept under its old name: it lives in :mod:`lightning_multiloss.results`.

The plugin core writes it too (for any Hydra app), so the schema is the core's; import it from
there in new code.
"""

from lightning_multiloss.results import (
    RESULT_FILE,
    STATUSES,
    Direction,
    RunResult,
    Status,
    TaskMetrics,
    config_key,
)

__all__ = ["RESULT_FILE", "STATUSES", "Direction", "RunResult", "Status", "TaskMetrics", "config_key"]
