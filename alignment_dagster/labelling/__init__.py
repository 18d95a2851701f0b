"""Labelling backends: where edge cases go to humans and where their labels come back from.

* `FileQueue`: batches as JSONL/CSV files in storage, label files imported back with row-level validation.
* `LabelStudioClient`: a Label Studio project per constitution version, over its REST API.
* `ReplayLabeller`: not a human at all; answers from known dataset labels (HH-RLHF) for tests and demos.

All three produce the `human_labels` contract: pair_id, choice (A/B/tie), annotator, labelled_at (UTC ISO),
backend, comment. Plain Python classes; the Dagster resources that wrap them live elsewhere.
"""

from alignment_dagster.labelling.common import LabelError, parse_choice, utc_iso
from alignment_dagster.labelling.file_queue import Batch, FileQueue, ImportResult
from alignment_dagster.labelling.label_studio import LabelStudioClient, LabelStudioError
from alignment_dagster.labelling.replay import ReplayLabeller, ReplayResult

__all__ = [
    "Batch", "FileQueue", "ImportResult", "LabelError", "LabelStudioClient", "LabelStudioError",
    "ReplayLabeller", "ReplayResult", "parse_choice", "utc_iso",
]
