import pytest
import torch

from moecarve.ffn import FFNWeights
from moecarve.profiling import NeuronStats

pytestmark = pytest.mark.unit


def test_streaming_stats_match_direct_computation_and_memory_is_bounded():
    torch.manual_seed(0)
    ffn = FFNWeights(
        up=torch.randn(12, 6), down=torch.randn(6, 12), gate=torch.randn(12, 6), activation="silu"
    )
    xs = [torch.randn(37, 6) for _ in range(9)]
    stats = NeuronStats(ffn, marker_top_k=3, sample_tokens=50, seed=1)
    for x in xs:
        stats.update(x)
    p = stats.finalize()
    h = ffn.hidden(torch.cat(xs)).double()
    assert p.num_tokens == 333
    torch.testing.assert_close(torch.from_numpy(p.mean_abs), h.abs().mean(0))
    torch.testing.assert_close(torch.from_numpy(p.mean_sq), (h * h).mean(0))
    markers = (
        torch.zeros(12)
        .double()
        .index_add_(0, h.abs().topk(3, dim=1).indices.flatten(), torch.ones(999).double())
    )
    torch.testing.assert_close(torch.from_numpy(p.rate), markers / 333)
    assert p.sample_h.shape == (50, 12) and p.sample_x.shape == (
        50,
        6,
    )  # bounded, whatever the token count
    # the sample rows are real (x, h) pairs
    torch.testing.assert_close(
        ffn.hidden(torch.from_numpy(p.sample_x)), torch.from_numpy(p.sample_h), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        torch.from_numpy(p.importance),
        (h * h).mean(0) * ffn.down.double().norm(dim=0) ** 2,
        rtol=1e-6,
        atol=1e-6,
    )


def test_reservoir_keeps_the_tokens_with_the_smallest_keys():
    """The sample is exactly the S tokens with the smallest random keys, however the stream is chunked."""
    torch.manual_seed(0)
    ffn = FFNWeights(up=torch.randn(12, 6), down=torch.randn(6, 12), activation="gelu")
    xs = [torch.randn(n, 6) for n in (30, 7, 64, 1, 40, 25)]
    stats = NeuronStats(ffn, sample_tokens=20, seed=3)
    for x in xs:
        stats.update(x)
    gen = torch.Generator().manual_seed(3)
    keys = torch.cat([torch.rand(x.shape[0], generator=gen) for x in xs])
    want = torch.cat(xs)[torch.argsort(keys)[:20]]
    torch.testing.assert_close(torch.from_numpy(stats.finalize().sample_x), want, rtol=0, atol=0)


def test_reservoir_keeps_the_dense_outputs_without_bias_and_handles_short_streams():
    torch.manual_seed(0)
    ffn = FFNWeights(up=torch.randn(12, 6), down=torch.randn(6, 12), down_bias=torch.randn(6), activation="gelu")
    xs = [torch.randn(n, 6) for n in (5, 9)]
    stats = NeuronStats(ffn, sample_tokens=20, seed=3)
    for x in xs:
        stats.update(x, y=ffn.output(x))  # fewer tokens than the sample size: all are kept
    p = stats.finalize()
    assert p.sample_x.shape == (14, 6) and p.sample_y.shape == (14, 6)
    x = torch.from_numpy(p.sample_x)
    torch.testing.assert_close(torch.from_numpy(p.sample_y), ffn.output(x) - ffn.down_bias, rtol=1e-5, atol=1e-5)
    assert sorted(map(tuple, p.sample_x.tolist())) == sorted(map(tuple, torch.cat(xs).tolist()))
    with pytest.raises(ValueError, match="every update or with none"):
        stats.update(xs[0])
    with pytest.raises(ValueError, match="no calibration tokens"):
        NeuronStats(ffn, sample_tokens=20).finalize()
