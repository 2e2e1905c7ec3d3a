"""DESIGN.md §3 invariant: with k = E the carved model's logits equal the dense model's."""

import pytest
import torch
from tiny import FAMILIES, tiny_model

from moecarve.architectures import arch_for
from moecarve.carving import carve_model
from moecarve.moe import MoEBlock
from moecarve.plan import plan
from moecarve.recipe import Recipe

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", ["S0A8E8", "S2A6E8"])
def test_k_equals_e_reproduces_dense_logits(family, layout):
    model = tiny_model(family)
    torch.manual_seed(1)
    ids = torch.randint(3, 300, (3, 48))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    recipe = Recipe.parse(
        {
            "model": "tiny",
            "moe": layout,
            "calibration": {"max_seq_length": 48},
            "profile": {"sample_tokens": 64},
        }
    )
    config = model.config.to_dict()
    carve_model(model, arch_for(config), plan(recipe, config), recipe, ids)
    blocks = [m for m in model.modules() if isinstance(m, MoEBlock)]
    assert len(blocks) == config.get("num_hidden_layers", config.get("n_layer"))
    with torch.no_grad():
        carved = model(input_ids=ids).logits
    torch.testing.assert_close(carved, dense, rtol=0, atol=1e-5)  # fp32 round-off


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "bert"])
def test_k_below_e_changes_logits(family):
    """The test above can fail: fewer experts really drop neurons."""
    model = tiny_model(family)
    ids = torch.randint(3, 300, (2, 48))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    recipe = Recipe.parse(
        {
            "model": "tiny",
            "moe": "S2A1E8",
            "calibration": {"max_seq_length": 48},
            "profile": {"sample_tokens": 64},
        }
    )
    config = model.config.to_dict()
    carve_model(model, arch_for(config), plan(recipe, config), recipe, ids)
    with torch.no_grad():
        assert (model(input_ids=ids).logits - dense).abs().max() > 1e-4


def test_layer_by_layer_replay_matches_the_model():
    """The sequential runner feeds each layer exactly what the full model would."""
    from moecarve.carving import decoder_layers
    from moecarve.sequential import capture_layer_calls, run_layer

    model = tiny_model("gemma3_text")  # sliding + global layers: per-layer masks matter
    ids = torch.randint(3, 300, (2, 40))
    arch = arch_for(model.config.to_dict())
    layers = decoder_layers(model, arch)
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
        state = capture_layer_calls(model, layers, ids)
        hidden = state.hidden
        for i, layer in enumerate(layers[:-1]):
            hidden = [run_layer(layer, h, c) for h, c in zip(hidden, state.calls[i], strict=True)]
            torch.testing.assert_close(torch.cat(hidden), ref[i + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "family", ["llama", "gemma3_text", "bert"]
)  # additive and non-additive FFNs
def test_later_layers_are_profiled_on_carved_inputs(family):
    """Layer 1's statistics come from what the *carved* layer 0 really outputs."""
    from moecarve.ffn import extract_ffn
    from moecarve.profiling import NeuronStats

    model, original = tiny_model(family), tiny_model(family)
    ids = torch.randint(3, 300, (2, 48))
    config = model.config.to_dict()
    arch = arch_for(config)
    recipe = Recipe.parse(
        {
            "model": "tiny",
            "moe": "S2A1E8",
            "calibration": {"max_seq_length": 48},
            "profile": {"sample_tokens": 64},
        }
    )
    outcome = carve_model(model, arch, plan(recipe, config), recipe, ids)
    from moecarve.carving import decoder_layers

    ffn1 = extract_ffn(decoder_layers(original, arch)[1], arch, arch.activation(config))
    stats = NeuronStats(ffn1, sample_tokens=64)
    handle = outcome.blocks[1].register_forward_pre_hook(lambda _m, args: stats.update(args[0]))
    with torch.no_grad():
        for row in ids:
            model(input_ids=row.unsqueeze(0))
    handle.remove()
    expected = stats.finalize().importance
    got = outcome.neuron_stats[1]["importance"]
    torch.testing.assert_close(
        torch.tensor(got), torch.from_numpy(expected).float(), rtol=1e-3, atol=1e-7
    )


@pytest.mark.parametrize("family", ["llama", "bert"])  # additive and non-additive FFNs
def test_routing_statistics_compare_against_the_dense_ffn_after_the_refit(family):
    """``refit_down`` re-solves the blocks' down projections, so "every neuron of the block" is no
    longer the dense FFN: the reconstruction error and recall must use the original weights."""
    from moecarve.carving import decoder_layers
    from moecarve.ffn import extract_ffn
    from moecarve.profiling import NeuronStats
    from moecarve.routing_stats import RoutingRecorder

    model, original = tiny_model(family), tiny_model(family)
    ids = torch.randint(3, 300, (2, 48))
    config = model.config.to_dict()
    arch = arch_for(config)
    recipe = Recipe.parse(
        {"model": "tiny", "moe": "S2A2E8", "calibration": {"max_seq_length": 48}, "profile": {"sample_tokens": 64}}
    )
    assert recipe.correction.refit_down
    outcome = carve_model(model, arch, plan(recipe, config), recipe, ids)
    block = outcome.blocks[1]
    ffn1 = extract_ffn(decoder_layers(original, arch)[1], arch, arch.activation(config))
    assert not torch.allclose(block.experts_down.permute(1, 0, 2).reshape(ffn1.down.shape[0], -1),
                              ffn1.down[:, block.expert_neurons.reshape(-1)])  # the refit changed them
    # the carve's calibration sample, rebuilt: the same stream of layer-1 inputs and the same seed
    stats = NeuronStats(ffn1, sample_tokens=64, seed=recipe.seed + 1)
    handle = block.register_forward_pre_hook(lambda _m, args: stats.update(args[0]))
    with torch.no_grad():
        for row in ids:
            model(input_ids=row.unsqueeze(0))
    handle.remove()
    x = torch.from_numpy(stats.finalize().sample_x)

    def error(x: torch.Tensor) -> float:
        with torch.no_grad():
            dense = ffn1.output(x).double()
            return float(((block(x).double() - dense) ** 2).sum() / (dense**2).sum())

    assert outcome.calibration_stats[1]["reconstruction_error"] == pytest.approx(error(x), rel=1e-3)
    # held-out statistics: the pipeline's recorder gets the dense down projection from the outcome
    held = torch.randn(30, x.shape[1])
    recorder = RoutingRecorder(block.num_experts, outcome.dense_down[1])
    with torch.no_grad():
        scores = block.scores(held)
        recorder(block, held, scores, block.select(scores))
    assert recorder.summary()["reconstruction_error"] == pytest.approx(error(held), rel=1e-3)


def test_router_fitted_on_every_calibration_token():
    """``router.fit_tokens: calibration`` fits the router on every calibration token the carve
    kept. With a sample that already holds every token the two settings see the same tokens (in
    another order) and must fit the same router; with a smaller sample they differ."""
    ids = torch.randint(3, 300, (2, 48))

    def carve(fit_tokens: str, sample_tokens: int) -> torch.Tensor:
        model = tiny_model("llama")
        config = model.config.to_dict()
        recipe = Recipe.parse({
            "model": "tiny", "moe": "S2A2E8", "calibration": {"max_seq_length": 48},
            "profile": {"sample_tokens": sample_tokens}, "router": {"fit_tokens": fit_tokens},
        })
        outcome = carve_model(model, arch_for(config), plan(recipe, config), recipe, ids)
        return outcome.blocks[0].router.weight.detach().clone()

    torch.testing.assert_close(carve("calibration", 96), carve("sample", 96), rtol=1e-3, atol=1e-4)
    assert not torch.allclose(carve("calibration", 64), carve("sample", 64), rtol=1e-2, atol=1e-3)
