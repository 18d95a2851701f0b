"""`prompt_pool` asset: normalised, deduplicated prompts with categories and a train/eval split."""

import pandas as pd
from dagster import AssetExecutionContext, Config, asset
from pydantic import Field

from alignment_dagster.data.prompts import STARTER_SOURCES, build_prompt_pool
from alignment_dagster.resources.storage_io import StorageResource
from alignment_dagster.resources.tracking import MLflowTracking


class PromptPoolConfig(Config):
    sources: list[str] = Field(
        default_factory=lambda: list(STARTER_SOURCES),
        description="JSONL/CSV/Parquet files (local path, s3:// URI, or package:// starter data).",
    )
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of prompts held out for evals.")
    default_category: str = Field("general", description="Category for rows that name none.")
    split_salt: str = Field("", description="Change to draw a different (still deterministic) split.")


@asset(group_name="data", kinds={"parquet"})
def prompt_pool(
    context: AssetExecutionContext, config: PromptPoolConfig, storage: StorageResource, mlflow: MLflowTracking
) -> pd.DataFrame:
    """Prompts from the configured sources: normalised, deduplicated, categorised, split train/eval."""
    pool = build_prompt_pool(
        config.sources,
        storage.read_uri,
        default_category=config.default_category,
        eval_fraction=config.eval_fraction,
        split_salt=config.split_salt,
    )
    if pool.bad_rows:
        context.log.warning(
            f"{len(pool.bad_rows)} bad prompt rows skipped; first: " + "; ".join(map(str, pool.bad_rows[:5]))
        )
    if pool.prompts.empty:
        raise ValueError(f"no valid prompts in {config.sources} ({len(pool.bad_rows)} bad rows)")
    report = pool.report()
    report.params.update(config.model_dump())
    context.add_output_metadata(mlflow.record(context, report))
    return pool.prompts
