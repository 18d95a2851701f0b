"""Partition definitions: constitution versions (and, later, blends) are dynamic partitions."""

from dagster import DynamicPartitionsDefinition

constitution_partitions = DynamicPartitionsDefinition(name="constitution")
