"""Partition definitions: constitution versions and blends are dynamic partitions."""

from dagster import (
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
)

constitution_partitions = DynamicPartitionsDefinition(name="constitution")
blend_partitions = DynamicPartitionsDefinition(name="blend")
# preference_dataset and everything downstream: one partition per constitution version and blend.
constitution_blend_partitions = MultiPartitionsDefinition(
    {"constitution": constitution_partitions, "blend": blend_partitions}
)
# How a constitution x blend partition reads a constitution-partitioned input: its constitution's partition.
BY_CONSTITUTION = MultiToSingleDimensionPartitionMapping(partition_dimension_name="constitution")
# ... and a blend-partitioned one (the `blend` asset): its blend's partition.
BY_BLEND = MultiToSingleDimensionPartitionMapping(partition_dimension_name="blend")
