"""Asset jobs: what a sensor launches for one partition."""

from dagster import AssetSelection, define_asset_job

from alignment_dagster.partitions import (
    blend_partitions,
    constitution_blend_partitions,
    constitution_partitions,
)

# Every asset partitioned by constitution version; later stages join this selection.
CONSTITUTION_ASSETS = ["constitution", "ai_preferences", "ai_principle_votes", "edge_cases", "human_labels"]
# What new human labels re-run: human_labels and the constitution-partitioned assets downstream of it
# (tests/test_human_labels_sensor.py checks this against the asset graph).
LABEL_REFRESH_ASSETS = ["human_labels"]
# Checks on ai_preferences that count this version's audit labels: re-checked when new labels arrive.
LABEL_CHECKS = ["judge_signal", "length_bias"]
# Unpartitioned inputs of those assets: a run includes them only when they were never materialized.
SHARED_UPSTREAM = ["prompt_pool", "response_pairs", "known_labels"]

constitution_job = define_asset_job(
    "constitution_pipeline",
    selection=AssetSelection.assets(*CONSTITUTION_ASSETS, *SHARED_UPSTREAM),
    partitions_def=constitution_partitions,
    description="Everything downstream of one constitution version (and missing shared inputs).",
)

# Everything partitioned by constitution x blend (no model calls before training).
BLEND_ASSETS = ["preference_dataset", "reward_model", "dpo_policy", "evals"]

blend_job = define_asset_job(
    "blend_pipeline",
    selection=AssetSelection.assets(*BLEND_ASSETS),
    partitions_def=constitution_blend_partitions,
    description="Everything downstream of one constitution version and blend.",
)

# What blend_sensor launches for a new or changed blend file.
blend_version_job = define_asset_job(
    "blend_version",
    selection=AssetSelection.assets("blend"),
    partitions_def=blend_partitions,
    description="The validated blend of one name (its downstream partitions refresh through the automation).",
)
