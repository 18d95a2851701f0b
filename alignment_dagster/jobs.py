"""Asset jobs: what a sensor launches for one partition."""

from dagster import AssetSelection, define_asset_job

from alignment_dagster.partitions import constitution_partitions

# Every asset partitioned by constitution version; later stages join this selection.
CONSTITUTION_ASSETS = AssetSelection.assets("constitution", "ai_preferences", "ai_principle_votes")

constitution_job = define_asset_job(
    "constitution_pipeline",
    selection=CONSTITUTION_ASSETS,
    partitions_def=constitution_partitions,
    description="Everything downstream of one constitution version.",
)
