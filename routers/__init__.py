"""Router construction, fitting and load balancing (pure torch; never imports transformers).

Two registries:
- ``registry``: router *methods* by name — ``build(ctx: RouterContext) -> Router``;
- ``kinds``: router *module classes* by kind, so a checkpoint can rebuild any router it holds.
Add a method: one module with a ``build`` function (and a Router class if it needs a new shape),
registered here by name. Built-ins are registered lazily: listing names imports no torch.
"""

from moecarve.registry import Registry

registry: Registry = Registry("router method")
registry.register("centroid", "routers.centroid:build")
registry.register("fitted", "routers.fitted:build")
registry.register("representative", "routers.representative:build")

kinds: Registry = Registry("router kind")
kinds.register("linear", "routers.linear:LinearRouter")
kinds.register("representative", "routers.representative:RepresentativeRouter")

__all__ = ["kinds", "registry"]
