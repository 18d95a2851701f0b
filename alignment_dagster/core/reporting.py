"""What a stage reports, built once by its plain function and recorded in two places from that one object:
the MLflow run (params, metrics, tags, artifacts) and the Dagster metadata (`resources.tracking` does both).

Plus the small formatters both places use: markdown tables, PNG figures, inline images.
"""

from __future__ import annotations

import base64
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Table:
    frame: pd.DataFrame
    preview: Sequence[str] | None  # columns shown as a markdown table in the metadata; None: MLflow only
    preview_key: str = "preview"  # the metadata entry of the preview
    artifact: bool = True  # logged to MLflow as Parquet
    max_rows: int = 10
    max_chars: int = 80


@dataclass
class StageReport:
    """One materialization's report.

    * `summary`: the numbers and words that answer "did this look right?": Dagster metadata, and MLflow
      metrics where numeric (NaN is left out of both).
    * `details`: small mappings (counts by category, settings): JSON metadata; with a metrics prefix, their
      numbers are also MLflow metrics `<prefix>.<key>`.
    * `metrics`, `params`, `tags`, `curves` (step -> value), `datasets` (training inputs): MLflow only.
    * `tables`: Parquet artifacts in MLflow, markdown previews in the metadata; `plots`: PNG artifacts and
      inline images; `texts`: text artifacts (markdown ones also metadata); `notes`: markdown metadata only.
    """

    summary: dict[str, Any] = field(default_factory=dict)
    details: dict[str, tuple[Any, str | None]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    plots: dict[str, tuple[bytes, str, str]] = field(default_factory=dict)  # name -> (png, alt, metadata key)
    texts: dict[str, tuple[str, bool]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    datasets: dict[str, pd.DataFrame] = field(default_factory=dict)  # MLflow dataset inputs (schema + digest)

    def add(self, **values: Any) -> StageReport:
        self.summary.update(values)
        return self

    def detail(self, name: str, values: Any, metrics_prefix: str | None = None) -> StageReport:
        self.details[name] = (values, metrics_prefix)
        return self

    def table(
        self,
        name: str,
        frame: pd.DataFrame,
        preview: Sequence[str] | None = None,
        *,
        preview_key: str = "preview",
        artifact: bool = True,
        max_rows: int = 10,
        max_chars: int = 80,
    ) -> StageReport:
        self.tables[name] = Table(frame, preview, preview_key, artifact, max_rows, max_chars)
        return self

    def plot(self, name: str, png: bytes, alt: str, key: str | None = None) -> StageReport:
        self.plots[name] = (png, alt, key or name)
        return self

    def text(self, name: str, text: str, markdown: bool = False) -> StageReport:
        self.texts[name] = (text, markdown)
        return self

    def all_metrics(self) -> dict[str, float]:
        """Every number this report gives MLflow: the summary's, the prefixed details' and `metrics`."""
        out = {k: v for k, v in self.summary.items() if is_number(v)}
        for values, prefix in self.details.values():
            if prefix is not None and isinstance(values, Mapping):
                out.update({f"{prefix}.{k}": v for k, v in values.items() if is_number(v)})
        out.update({k: v for k, v in self.metrics.items() if is_number(v)})
        return {k: float(v) for k, v in out.items()}


def is_number(value: Any) -> bool:
    """A real number, numpy's included; NaN and booleans are not metrics."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def markdown_table(df: pd.DataFrame, max_rows: int = 10, max_chars: int = 80) -> str:
    """A markdown preview of a table, cells clipped so the UI stays readable."""

    def cell(v: object) -> str:
        s = str(v).replace("|", "\\|").replace("\n", " ")
        return s if len(s) <= max_chars else s[: max_chars - 1] + "…"

    head = df.head(max_rows)
    lines = ["| " + " | ".join(map(str, head.columns)) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.itertuples(index=False)]
    return "\n".join(lines)


def bullet_list(items: Sequence[object], empty: str = "none") -> str:
    return "\n".join(f"- {item}" for item in items) or empty


def figure_png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_markdown(png: bytes, alt: str = "plot") -> str:
    """Inline a PNG in a markdown metadata value (the Dagster UI renders data URIs)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def value_counts(series: pd.Series) -> dict[str, int]:
    """{value: count} with plain str keys and int counts (JSON- and MLflow-ready), most common first."""
    return {str(k): int(v) for k, v in series.value_counts().items()}
