import pytest

import clustering
import routers
from moecarve.registry import Registry

pytestmark = pytest.mark.unit

# Pinned: changing a built-in name breaks saved recipes; update this list on purpose.
BUILTIN_PARTITIONS = {"cmoe", "coact", "random", "weight_kmeans"}
BUILTIN_ROUTERS = {"centroid", "fitted", "representative"}
BUILTIN_ROUTER_KINDS = {"linear", "representative"}


def test_builtin_names_are_pinned():
    assert set(clustering.registry.names()) == BUILTIN_PARTITIONS
    assert set(routers.registry.names()) == BUILTIN_ROUTERS
    assert set(routers.kinds.names()) == BUILTIN_ROUTER_KINDS


def test_every_builtin_resolves():
    for name in clustering.registry.names():
        assert callable(clustering.registry.get(name))
    for name in routers.registry.names():
        assert callable(routers.registry.get(name))
    for name in routers.kinds.names():
        assert routers.kinds.get(name).kind == name


def test_duplicates_rejected_and_unknown_lists_known():
    reg: Registry = Registry("thing")
    reg.register("a", lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", lambda: 2)

    @reg.register("b")
    def b():
        return 2

    with pytest.raises(KeyError, match="known: a, b"):
        reg.get("c")
    assert reg.get("b") is b
