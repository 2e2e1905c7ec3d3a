"""The recipe: ONE pydantic model that is the library argument, the YAML file and the HTTP body.

Help text lives in ``Field(description=...)`` only. Importing this module never imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moecarve.errors import RecipeError
from moecarve.export.base import DEFAULT_SCORE_SCALE

DEFAULT_MODEL = "smollm2-135m"
_SHORTHAND = re.compile(r"^S(\d+)A(\d+)E(\d+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def parse_shorthand(text: str) -> dict[str, int]:
    """CMoE's ``S{shared}A{activated}E{total}`` → recipe fields (E counts the shared units too)."""
    m = _SHORTHAND.match(text.strip().upper())
    if not m:
        raise ValueError(
            f"expected a layout like 'S2A2E16' (shared, activated, total experts), got {text!r}"
        )
    shared, active, total = (int(g) for g in m.groups())
    if total <= shared:
        raise ValueError(f"{text}: total experts E{total} must exceed shared S{shared}")
    return {
        "num_shared_experts": shared,
        "num_experts_per_tok": active,
        "num_experts": total - shared,
    }


class MoeSpec(_Strict):
    """Layout of every MoE layer, in units of one routed expert's size."""

    num_experts: int | None = Field(None, ge=1, description="Routed experts per layer (E).")
    num_experts_per_tok: int | None = Field(
        None, ge=1, description="Routed experts selected per token (k)."
    )
    num_shared_experts: int | None = Field(
        None,
        ge=0,
        description="Shared (always-on) expert size, in units of one routed expert's size.",
    )
    active_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Budget-first layout: the active FFN fraction alone; moecarve picks S, k and E.",
    )
    units: int | None = Field(
        None,
        ge=2,
        description="With active_fraction: about this many equal units (shared + routed experts) per "
        "layer, the nearest divisor of d_ff (at least 4 neurons each); default 384, or 256 with recovery "
        "(finer units measured better at every fraction and cost carve time and recovery steps; "
        "moecarve/layouts.py, bench/README.md).",
    )
    layer_budgets: Literal["uniform", "adaptive", "sensitivity"] | None = Field(
        None,
        description="How active_fraction's total is spread over the layers. 'sensitivity' (the default "
        "with active_fraction) = more active neurons where the dense model's loss is most sensitive to "
        "losing them (Taylor importance from one backward pass over sensitivity_tokens calibration tokens); "
        "'adaptive' = the same, by FFN output energy on one dense window; 'uniform' = the same layout "
        "in every layer (the only choice, and the default, with an explicit layout). moecarve/budgets.py.",
    )

    sensitivity_tokens: int = Field(
        1024,
        ge=2,
        description="layer_budgets 'sensitivity': calibration tokens of the dense model's backward pass "
        "(512-token chunks from the first calibration window on; ~7 s per 1024 tokens on SmolLM2).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return parse_shorthand(data)
        if isinstance(data, dict) and isinstance(data.get("layout"), str):
            data = dict(data)
            data.update(parse_shorthand(data.pop("layout")))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> MoeSpec:
        explicit = self.num_experts is not None or self.num_experts_per_tok is not None
        if not explicit and self.active_fraction is None:
            raise ValueError(
                "give num_experts + num_experts_per_tok (+ num_shared_experts), a layout like 'S2A2E16', or active_fraction"
            )
        if explicit and self.units is not None:
            raise ValueError("units goes with active_fraction; an explicit layout sets its own units (S + E)")
        if explicit and self.layer_budgets not in (None, "uniform"):
            raise ValueError(f"layer_budgets: '{self.layer_budgets}' needs active_fraction (the total to distribute), not an explicit layout")
        if self.layer_budgets is None:
            self.layer_budgets = "uniform" if explicit else "sensitivity"
        if explicit:
            if self.num_experts is None or self.num_experts_per_tok is None:
                raise ValueError("num_experts and num_experts_per_tok must be given together")
            if self.num_experts_per_tok > self.num_experts:
                raise ValueError(
                    f"num_experts_per_tok (k={self.num_experts_per_tok}) cannot exceed num_experts "
                    f"(E={self.num_experts}); lower k or raise E"
                )
            if self.num_shared_experts is None:
                self.num_shared_experts = 0
        return self

    def resolved(self, d_ff: int | None = None) -> MoeSpec:
        """Explicit S·k·E, picking a layout from ``active_fraction`` when only that was given."""
        if self.num_experts is not None:
            return self
        from moecarve.layouts import layout_for_fraction

        return MoeSpec(**layout_for_fraction(self.active_fraction, d_ff, self.units))  # type: ignore[arg-type]

    @property
    def layout(self) -> str:
        r = self.resolved()
        return f"S{r.num_shared_experts}A{r.num_experts_per_tok}E{r.num_experts + r.num_shared_experts}"  # type: ignore[operator]

    @property
    def fraction(self) -> float:
        r = self.resolved()
        units = r.num_experts + r.num_shared_experts  # type: ignore[operator]
        return (r.num_shared_experts + r.num_experts_per_tok) / units  # type: ignore[operator]


class LayerOverride(_Strict):
    """A different layout (or dense) for some layers."""

    layers: list[int] = Field(
        ..., min_length=1, description="Layer indices this override applies to."
    )
    dense: bool = Field(False, description="Keep these layers dense (not carved).")
    moe: MoeSpec | None = Field(
        None, description="Layout for these layers; the recipe's moe when omitted."
    )

    @model_validator(mode="after")
    def _one(self) -> LayerOverride:
        if self.dense == (self.moe is not None):
            raise ValueError("an override sets exactly one of dense: true or moe: {...}")
        return self


def _check_partition(name: str) -> str:
    from clustering import registry

    return registry.check(name)


def _check_router(name: str) -> str:
    from routers import registry

    return registry.check(name)


class PartitionSpec(_Strict):
    method: str = Field(
        "coact", description="Neuron → expert partition method (a name in the clustering registry)."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Method-specific options.")
    refine_rounds: int = Field(
        0,
        ge=0,
        le=50,
        description="Rounds of refinement against the router: re-place routed neurons (balanced) "
        "where the current routing uses them most, re-fit the router, keep the best round by "
        "captured gain on the router's fitting tokens (stops early at a fixed point); 0 = off.",
    )

    _v = field_validator("method")(classmethod(lambda cls, v: _check_partition(v)))


class RouterSpec(_Strict):
    method: str = Field("fitted", description="Router construction method (a name in the routers registry).")
    options: dict[str, Any] = Field(default_factory=dict, description="Method-specific options.")
    balance: bool = Field(
        True, description="Fit a per-expert selection bias on calibration routing so expert load is even."
    )
    fit_tokens: Literal["calibration", "sample"] = Field(
        "calibration",
        description="Tokens the router is fitted on: 'calibration' = every calibration token when the carve keeps "
        "their activations in memory (else the sample); 'sample' = the profile's bounded sample (faster).",
    )

    _v = field_validator("method")(classmethod(lambda cls, v: _check_router(v)))


class CalibrationSpec(_Strict):
    path: str | list[str] | None = Field(
        None,
        description="Text file(s) or directory (.txt/.jsonl/.parquet), joined with a blank line; "
        "omit for the embedded corpus named by `corpus`.",
    )
    corpus: Literal["austen", "mixed"] = Field(
        "austen",
        description="Embedded corpus used when `path` is omitted: 'austen' = the Austen protocol's four novels "
        "(DESIGN.md §5); 'mixed' = those + Python docs + Python source (about 56/22/22 % of tokens; windows are "
        "drawn at random from the whole, so use many windows for a stable domain mix).",
    )
    text_column: str = Field(
        "text", description="Column / key holding text in .jsonl and .parquet files."
    )
    num_calibration_samples: int = Field(8, ge=1, description="Number of calibration windows.")
    max_seq_length: int = Field(2048, ge=8, description="Tokens per calibration window.")
    shuffle: bool = Field(
        True, description="Pick windows by torch.randperm under `seed` (else the first ones)."
    )
    seed: int = Field(0, description="Seed of the window choice.")


class EvaluationSpec(_Strict):
    enabled: bool = Field(
        True, description="Measure held-out perplexity of dense and carved models."
    )
    path: str | list[str] | None = Field(
        None, description="Held-out text file(s); omit for the embedded held-out corpus."
    )
    text_column: str = Field(
        "text", description="Column / key holding text in .jsonl and .parquet files."
    )
    max_windows: int = Field(
        8, ge=1, description="Score at most this many non-overlapping windows."
    )
    window: int | None = Field(
        None, ge=8, description="Window length; defaults to calibration.max_seq_length."
    )


class ProfileSpec(_Strict):
    marker_top_k: int = Field(
        10,
        ge=1,
        description="Per token, the K largest |activations| count as 'markers' (CMoE's activation rate).",
    )
    sample_tokens: int = Field(
        4096,
        ge=64,
        description="Bounded sample of calibration tokens kept per layer for clustering and router fitting.",
    )


class CorrectionSpec(_Strict):
    """Cheap closed-form corrections fitted on calibration tokens after routing is fixed."""

    refit_down: bool = Field(
        True,
        description="Re-solve shared and expert down projections by ridge least squares so shared + "
        "selected experts reproduce the dense FFN output on calibration tokens (exportable).",
    )
    ridge: float = Field(
        0.2,
        ge=0,
        description="Ridge towards the dense down projection, relative to the mean Gram diagonal (less fits the "
        "calibration text's domain better and other text worse; bench/README.md).",
    )
    target: Literal["layer", "model"] = Field(
        "layer",
        description="What the refit reproduces: 'layer' = the dense FFN's output on the carved inputs; "
        "'model' = the dense model's residual stream (also absorbs error from earlier carved layers; "
        "carving runs each layer twice; additive FFNs only).",
    )


class RecoverySpec(_Strict):
    """Optional short distillation after carving (moecarve/recovery.py)."""

    enabled: bool = Field(False, description="Fit the carved model to the dense model's next-token distribution on the calibration text.")
    budget_seconds: float = Field(
        300, gt=0, description="Wall-clock budget, the dense teacher pass included (300 s = 10 CPU-minutes on 2 cores)."
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (else the budget decides).")
    parameters: Literal["down", "experts"] = Field(
        "down",
        description="What is trained: 'down' = shared and expert down projections; 'experts' = all their weights. "
        "Partitions and routers stay as carved; with router.balance the selection biases are refitted "
        "afterwards (exports unchanged).",
    )
    norms: bool = Field(
        True,
        description="Also train the model's normalisation scales (RMSNorm / LayerNorm weights: about two "
        "hidden-size vectors per layer; every export keeps them).",
    )
    learning_rate: float = Field(1e-3, gt=0, description="AdamW peak learning rate (warm-up, then cosine decay to 10 %).")
    chunk_tokens: int = Field(512, ge=8, description="Calibration windows are cut into chunks of this many tokens.")
    chunks_per_step: int = Field(2, ge=1, description="Chunks per optimizer step.")
    top_k_logits: int = Field(
        512, ge=1, description="Teacher log-probabilities kept per position (its K most likely tokens; 12 bytes each: "
        "100 MB for 8 × 2048 calibration tokens at 512)."
    )
    validation_chunks: int = Field(2, ge=0, description="Calibration chunks held out; the weights with the lowest loss on them are kept.")
    validate_every: int = Field(10, ge=1, description="Validation interval in steps.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"enabled": data} if isinstance(data, bool) else data


def _check_export_format(name: str) -> str:
    from moecarve.export import targets

    if name == "reference":
        raise ValueError("the reference checkpoint is always written; list native formats here")
    return targets.check(name)


class ExportSpec(_Strict):
    """Native MoE exports written after the reference checkpoint (each with a fidelity report)."""

    formats: list[str] = Field(
        default_factory=list,
        description="Native formats ('glm4_moe', 'qwen2_moe'), each written to OUT_DIR/exports/<format>/; "
        "plan refuses models or layouts a format cannot hold exactly.",
    )
    score_scale: float = Field(
        DEFAULT_SCORE_SCALE,
        gt=0,
        le=1,
        description="Unit-weight recipe (DESIGN.md §4): per layer, the router is multiplied by a power of two τ "
        "so that the flattened scores τ·s have this standard deviation on calibration text.",
    )
    tau: float | None = Field(None, gt=0, le=1, description="One fixed τ for every layer instead of score_scale.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"formats": [data]}
        return {"formats": data} if isinstance(data, list) else data

    @field_validator("formats")
    @classmethod
    def _known_unique(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_export_format(name)
        if len(set(v)) != len(v):
            raise ValueError(f"formats repeat: {v}")
        return v


class Recipe(_Strict):
    """Everything a carve needs; the same object in Python, YAML and HTTP."""

    model: str = Field(
        DEFAULT_MODEL,
        description="Local HF directory, hub id (when online), or the packaged default 'smollm2-135m'.",
    )
    moe: MoeSpec = Field(
        ...,
        description="Layout: {num_experts, num_experts_per_tok, num_shared_experts}, 'S2A2E16', or {active_fraction}.",
    )
    overrides: list[LayerOverride] = Field(
        default_factory=list,
        description="Per-layer layouts or dense layers: [{layers: [0, 1], dense: true}, {layers: [5], moe: 'S1A3E8'}].",
    )
    partition: PartitionSpec = Field(
        default_factory=PartitionSpec, description="How neurons are grouped into experts."
    )
    router: RouterSpec = Field(
        default_factory=RouterSpec, description="How routed experts are chosen per token."
    )
    correction: CorrectionSpec = Field(
        default_factory=CorrectionSpec, description="Cheap corrections fitted while carving."
    )
    calibration: CalibrationSpec = Field(
        default_factory=CalibrationSpec, description="Text the neurons are profiled on."
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Held-out perplexity, dense vs carved."
    )
    profile: ProfileSpec = Field(
        default_factory=ProfileSpec, description="Per-neuron statistics collected while carving."
    )
    recovery: RecoverySpec = Field(
        default_factory=RecoverySpec, description="Optional distillation after carving: {enabled: true, budget_seconds: 300}, or true."
    )
    seed: int = Field(0, description="Seed of partition and router methods.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Dtype of the saved checkpoint.")
    export: ExportSpec = Field(
        default_factory=ExportSpec, description="Native exports: {formats: [glm4_moe, qwen2_moe], score_scale}, or a format name."
    )

    @model_validator(mode="after")
    def _recovery_units(self) -> Recipe:
        # a budget-first layout with recovery: the finest default units make every training step
        # dearer (k · E pairs); within the 300 s, 256 units measured best (moecarve/layouts.py)
        if self.recovery.enabled and self.moe.active_fraction is not None and self.moe.num_experts is None \
                and self.moe.units is None:
            from moecarve.layouts import RECOVERY_UNITS

            self.moe.units = RECOVERY_UNITS
        return self

    @model_validator(mode="after")
    def _overrides_disjoint(self) -> Recipe:
        seen: set[int] = set()
        for o in self.overrides:
            dup = seen.intersection(o.layers)
            if dup:
                raise ValueError(f"layers {sorted(dup)} appear in more than one override")
            seen.update(o.layers)
        return self

    def overridden(self, index: int) -> bool:
        """Whether an override sets layer ``index`` (else the base ``moe`` layout applies)."""
        return any(index in o.layers for o in self.overrides)

    def layer_moe(self, index: int, d_ff: int | None = None) -> MoeSpec | None:
        """Resolved layout of layer ``index``; None keeps it dense."""
        for o in self.overrides:
            if index in o.layers:
                return None if o.dense else o.moe.resolved(d_ff)  # type: ignore[union-attr]
        return self.moe.resolved(d_ff)

    # --- YAML ⇄ Python -------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise RecipeError(f"cannot read recipe {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe {path} is not valid YAML: {e}") from e
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: Any, source: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise RecipeError(
                f"{source}: expected a mapping of recipe fields, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise RecipeError(f"{source}: {format_validation_error(e)}") from e

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "recipe"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
