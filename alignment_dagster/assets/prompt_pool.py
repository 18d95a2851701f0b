"""`prompt_pool` asset: normalised, deduplicated prompts with categories and a train/eval split."""

import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, asset
from pydantic import Field

from alignment_dagster.core.reporting import markdown_table
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
    by_category = pool.counts_by_category()
    by_split = pool.counts_by_split()
    with mlflow.asset_run(context) as run:
        run.log_params(config.model_dump())
        run.log_metrics(
            {
                "n_prompts": len(pool.prompts),
                "rows_read": pool.rows_read,
                "bad_rows": len(pool.bad_rows),
                "exact_duplicates": pool.exact_duplicates,
                "normalised_duplicates": pool.normalised_duplicates,
                "empty": pool.empty,
                **{f"category.{k}": v for k, v in by_category.items()},
                **{f"split.{k}": v for k, v in by_split.items()},
            }
        )
        if pool.bad_rows:
            run.log_json("bad_rows", [str(b) for b in pool.bad_rows])
    context.add_output_metadata(
        {
            "n_prompts": len(pool.prompts),
            "by_category": MetadataValue.json(by_category),
            "by_split": MetadataValue.json(by_split),
            "exact_duplicates_removed": pool.exact_duplicates,
            "normalised_duplicates_removed": pool.normalised_duplicates,
            "empty_dropped": pool.empty,
            "bad_rows": len(pool.bad_rows),
            "bad_row_examples": MetadataValue.md("\n".join(f"- {b}" for b in pool.bad_rows[:10]) or "none"),
            "preview": MetadataValue.md(
                markdown_table(pool.prompts[["prompt_id", "category", "split", "prompt"]])
            ),
            **run.metadata(),
        }
    )
    return pool.prompts
