import pytest

from moecarve.errors import RecipeError
from moecarve.recipe import Recipe, parse_shorthand

pytestmark = pytest.mark.unit


def test_shorthand_matches_cmoe_notation():
    assert parse_shorthand("S2A2E16") == {
        "num_shared_experts": 2,
        "num_experts_per_tok": 2,
        "num_experts": 14,
    }
    r = Recipe.parse({"moe": "S2A2E16"})
    assert (r.moe.num_experts, r.moe.num_experts_per_tok, r.moe.num_shared_experts) == (14, 2, 2)
    assert r.moe.fraction == pytest.approx(0.25)
    assert r.moe.layout == "S2A2E16"


def test_explicit_fields_and_layout_key_agree():
    a = Recipe.parse(
        {"moe": {"num_experts": 14, "num_experts_per_tok": 2, "num_shared_experts": 2}}
    )
    b = Recipe.parse({"moe": {"layout": "S2A2E16"}})
    assert a.moe == b.moe


@pytest.mark.parametrize(
    "moe, fragment",
    [
        ({"num_experts": 4, "num_experts_per_tok": 5}, "cannot exceed"),
        ({"num_experts": 4}, "together"),
        ({}, "give num_experts"),
        ("S2A2", "S2A2E16"),
        ({"num_experts": 0, "num_experts_per_tok": 1}, "greater than or equal"),
        ({"active_fraction": 1.5}, "less than or equal"),
    ],
)
def test_bad_layouts_name_the_field(moe, fragment):
    with pytest.raises(RecipeError, match="moe") as e:
        Recipe.parse({"moe": moe})
    assert fragment in str(e.value)


def test_unknown_fields_and_methods_are_rejected_with_the_known_names():
    with pytest.raises(RecipeError, match="num_expert: Extra inputs"):
        Recipe.parse({"moe": "S1A1E4", "num_expert": 3})
    with pytest.raises(RecipeError, match="known: cmoe, coact"):
        Recipe.parse({"moe": "S1A1E4", "partition": {"method": "nope"}})
    with pytest.raises(RecipeError, match="known: centroid"):
        Recipe.parse({"moe": "S1A1E4", "router": {"method": "nope"}})


def test_budget_first_layout_picks_fine_experts_that_divide_d_ff():
    r = Recipe.parse({"moe": {"active_fraction": 0.25}})
    m = r.moe.resolved(1536)
    assert (m.num_shared_experts + m.num_experts) == 384  # 4-neuron units: measured best at every fraction
    assert m.fraction == pytest.approx(0.25)
    assert m.num_experts_per_tok < m.num_shared_experts  # measured: most of the budget always on
    assert r.moe.resolved(96).num_experts + r.moe.resolved(96).num_shared_experts == 24  # ≥ 4 neurons each
    assert r.moe.resolved(28672).num_experts + r.moe.resolved(28672).num_shared_experts == 448  # nearest divisor
    for d_ff in (64, 96, 1536, 2048, 5632, 11008, 14336, 28672):
        for f in (0.1, 0.25, 0.5, 0.75):
            m = r.moe.model_copy(update={"active_fraction": f}).resolved(d_ff)
            assert d_ff % (m.num_experts + m.num_shared_experts) == 0
            assert 1 <= m.num_experts_per_tok <= m.num_experts
            units = m.num_experts + m.num_shared_experts
            # routed part: 1/4 of the active units, at most 1/16 of all units (rounded)
            assert m.num_experts_per_tok <= max(1, round(units / 16))
            assert abs(m.fraction - f) <= 0.5 / units + 1e-9
            assert d_ff // units >= 4
    fine = {f: r.moe.model_copy(update={"active_fraction": f}).resolved(1536) for f in (0.25, 0.5, 0.75)}
    assert [(m.num_shared_experts, m.num_experts_per_tok) for m in fine.values()] == [(72, 24), (168, 24), (264, 24)]
    assert Recipe.parse({"moe": {"active_fraction": 0.5}}).moe.layout == "S168A24E384"  # without a config
    # with recovery 256 units (cheaper training steps), unless the recipe names its units or layout
    assert Recipe.parse({"moe": {"active_fraction": 0.5}, "recovery": True}).moe.resolved(1536).layout == "S112A16E256"
    assert Recipe.parse({"moe": {"active_fraction": 0.5, "units": 384}, "recovery": True}).moe.units == 384
    assert Recipe.parse({"moe": "S2A2E16", "recovery": True}).moe.units is None


def test_units_sets_the_granularity_of_a_budget_first_layout_and_defaults_pick_the_budgets():
    r = Recipe.parse({"moe": {"active_fraction": 0.75, "units": 256}})
    m = r.moe.resolved(1536)
    assert (m.num_shared_experts, m.num_experts_per_tok, m.num_experts) == (176, 16, 80)
    assert r.moe.resolved(1000).num_experts + r.moe.resolved(1000).num_shared_experts == 250  # nearest divisor
    assert r.moe.layer_budgets == "sensitivity"  # the default with active_fraction
    assert Recipe.parse({"moe": "S2A2E16"}).moe.layer_budgets == "uniform"  # and with an explicit layout
    with pytest.raises(RecipeError, match="units goes with active_fraction"):
        Recipe.parse({"moe": {"num_experts": 8, "num_experts_per_tok": 2, "units": 256}})
    with pytest.raises(RecipeError, match="needs active_fraction"):
        Recipe.parse({"moe": {"num_experts": 8, "num_experts_per_tok": 2, "layer_budgets": "sensitivity"}})


def test_overrides_select_layers_and_must_be_disjoint():
    r = Recipe.parse(
        {
            "moe": "S1A1E4",
            "overrides": [{"layers": [0], "dense": True}, {"layers": [2], "moe": "S0A2E4"}],
        }
    )
    assert r.layer_moe(0) is None
    assert r.layer_moe(2).num_experts == 4 and r.layer_moe(2).num_shared_experts == 0
    assert r.layer_moe(1).num_experts == 3
    with pytest.raises(RecipeError, match="more than one override"):
        Recipe.parse(
            {
                "moe": "S1A1E4",
                "overrides": [{"layers": [0], "dense": True}, {"layers": [0], "dense": True}],
            }
        )


def test_yaml_round_trip(tmp_path):
    r = Recipe.parse({"moe": "S2A2E16", "calibration": {"path": ["a.txt", "b.txt"], "seed": 3}})
    path = tmp_path / "r.yaml"
    path.write_text(r.to_yaml())
    assert Recipe.from_yaml(path) == r


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("moe: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.from_yaml(bad)
    with pytest.raises(RecipeError, match="cannot read"):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    bad.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="expected a mapping"):
        Recipe.from_yaml(bad)
