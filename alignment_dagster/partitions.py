"""Partition definitions: constitution versions and blends are dynamic partitions."""

from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition

constitution_partitions = DynamicPartitionsDefinition(name="constitution")
blend_partitions = DynamicPartitionsDefinition(name="blend")
# preference_dataset and everything downstream: one partition per constitution version and blend.
constitution_blend_partitions = MultiPartitionsDefinition(
    {"constitution": constitution_partitions, "blend": blend_partitions}
)
