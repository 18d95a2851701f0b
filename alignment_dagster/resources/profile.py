"""The deployment's run profile (`core.profiles`): sizes for runs whose config leaves them unset."""

from __future__ import annotations

from typing import Any

from dagster import Config, ConfigurableResource
from pydantic import Field

from alignment_dagster.core.profiles import ProfileName, resolve


class RunProfile(ConfigurableResource):
    """`full`, `demo` or `quick` (ALIGNMENT_PROFILE); see `core.profiles`."""

    name: ProfileName = Field("full", description="The profile whose sizes fill a run config's unset fields.")

    def sizes(self, stage: str, config: Config, fields: tuple[str, ...]) -> dict[str, Any]:
        """The run config's `fields`, each None filled from this profile."""
        return resolve(self.name, stage, {f: getattr(config, f) for f in fields})
