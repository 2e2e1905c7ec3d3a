"""Neuron → expert partition methods (pure numpy / torch; never imports transformers).

Add a method: write one module with a function ``partition(profile, request) -> Partition`` and
register it here by name. Built-ins are registered lazily so listing names imports nothing heavy.
"""

from clustering.base import LayerProfile, Partition, PartitionFn, PartitionRequest
from moecarve.registry import Registry

registry: Registry[PartitionFn] = Registry("partition method")
registry.register("cmoe", "clustering.cmoe:partition")
registry.register("coact", "clustering.coact:partition")
registry.register("random", "clustering.random_split:partition")
registry.register("weight_kmeans", "clustering.weight_kmeans:partition")

__all__ = ["LayerProfile", "Partition", "PartitionFn", "PartitionRequest", "registry"]
