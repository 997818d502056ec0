import json
import math

import numpy as np
import pytest

from inferopt.measure import channels
from inferopt.measure.channels import compare_outputs
from inferopt.measure.fidelity import (
    ChannelFigure,
    DecisionFigure,
    OutputsComparison,
    decision_kind,
    mean_cosine,
    nonfinite_share,
    propose_decisions,
)

Samples = list[dict[str, np.ndarray]]


def detection_head(n: int, anchors: int = 20, seed: int = 0) -> tuple[Samples, Samples]:
    """[1, anchors, 5] per sample: 4 box coordinates in [0, 600] and an objectness logit
    ~N(-0.1, 0.5), through a static per-tensor INT8 quantiser (scale = max / 127 ~ 4.7): the
    boxes keep ~1.4 units of rounding error, every logit rounds to 0."""
    rng = np.random.default_rng(seed)
    reference, candidate = [], []
    for _ in range(n):
        boxes = rng.uniform(0, 600, size=(1, anchors, 4))
        logits = rng.normal(-0.1, 0.5, size=(1, anchors, 1))
        r = np.concatenate([boxes, logits], axis=-1).astype(np.float32)
        reference.append({"det": r})
        candidate.append({"det": (np.round(r / (600 / 127)) * (600 / 127)).astype(np.float32)})
    return reference, candidate


def test_mixed_range_head_the_whole_tensor_cosine_cannot_see() -> None:
    reference, candidate = detection_head(500)
    ref = np.concatenate([s["det"] for s in reference])
    got = np.concatenate([s["det"] for s in candidate])
    assert np.all(got[..., 4] == 0)
    assert mean_cosine(ref, got) > 0.9999  # the old figure: "drop 0.0000"

    result = compare_outputs(reference, candidate, decisions={"det": "sign"})
    worst = result.outputs[0].worst_channel
    assert (worst.output, worst.channel, worst.basis) == ("det", 4, "spread")
    # Zeroed: NMSE = E[r^2] / Var(r) = (0.25 + 0.01) / 0.25, drop = NMSE / 2 ~ 0.52.
    assert 0.45 < worst.drop < 0.6
    assert worst.sqnr_db is not None and abs(worst.sqnr_db) < 1.0
    assert worst.interval.contains(worst.drop) and worst.interval.high - worst.interval.low < 0.03
    assert all(c.drop < 1e-3 for c in result.outputs[0].channels[:4])

    decision = result.outputs[0].decision
    assert decision is not None and (decision.kind, decision.channel) == ("sign", 4)
    assert decision.flip_rate == pytest.approx(float(np.mean(ref[..., 4] > 0)), abs=1e-12)
    assert decision.interval.contains(decision.flip_rate)
    assert decision.interval.high - decision.interval.low < 0.04
    assert decision.positions == 500 * 20

    assert result.drop == pytest.approx(worst.drop)  # 0.52 > the flip rate ~0.42
    assert isinstance(result.worst, ChannelFigure)
    line = result.describe()
    assert (
        "output 'det' channel 4" in line and "'det' sign flips" in line and "in channel 4" in line
    )


def test_token_outputs_of_different_lengths_match_the_pooled_definition() -> None:
    rng = np.random.default_rng(2)
    lengths = [3, 11, 7, 1, 9, 5] * 5
    reference = [{"tokens": rng.normal(2.0, 1.0, size=(1, m, 6))} for m in lengths]
    candidate = []
    for sample in reference:
        noise = rng.normal(0.0, 0.01, size=sample["tokens"].shape)
        noise[..., 3] *= 30  # channel 3 is the worst
        candidate.append({"tokens": sample["tokens"] + noise})
    result = compare_outputs(reference, candidate)

    ref = np.concatenate([s["tokens"][0] for s in reference])  # [tokens, 6]
    got = np.concatenate([s["tokens"][0] for s in candidate])
    nmse = ((got - ref) ** 2).sum(0) / ((ref - ref.mean(0)) ** 2).sum(0)
    channels = result.outputs[0].channels
    assert [c.drop for c in channels] == pytest.approx(list(nmse / 2), rel=1e-9)
    assert [c.sqnr_db for c in channels] == pytest.approx(list(-10 * np.log10(nmse)), rel=1e-9)
    assert result.worst.channel == 3 and result.outputs[0].channel_axis == 2


@pytest.mark.parametrize("side", ["reference", "candidate"])
def test_nan_is_never_agreement(side: str) -> None:
    rng = np.random.default_rng(3)
    reference = [{"y": rng.standard_normal((1, 4, 3))} for _ in range(20)]
    candidate = [{"y": s["y"].copy()} for s in reference]
    spoiled = reference if side == "reference" else candidate
    spoiled[7]["y"][0, 2, 1] = np.nan
    result = compare_outputs(reference, candidate, decisions={"y": "argmax"})

    output = result.outputs[0]
    share = getattr(output, f"nonfinite_{side}")
    other = "candidate" if side == "reference" else "reference"
    assert share == pytest.approx(1 / (20 * 12)) and getattr(output, f"nonfinite_{other}") == 0
    assert result.drop == 1.0 and result.drop_interval == output.channels[1].interval
    assert (output.channels[1].basis, output.channels[1].sqnr_db) == ("nonfinite", None)
    assert [c.drop for c in output.channels] == [0.0, 1.0, 0.0]  # the others still agree
    assert output.decision is not None and output.decision.flip_rate == pytest.approx(1 / 80)
    assert "NaN/Inf" in result.describe() and f"{side} 0.42%" in result.describe()
    json.dumps(result.to_json(), allow_nan=False)


def test_nonfinite_share() -> None:
    assert nonfinite_share(np.array([1.0, np.inf, np.nan, 0.0])) == 0.5
    assert nonfinite_share(np.arange(4)) == 0.0 and nonfinite_share(np.zeros(0)) == 0.0


def test_constant_and_zero_channels_have_their_documented_basis() -> None:
    rng = np.random.default_rng(4)
    reference, candidate = [], []
    for _ in range(30):
        r = np.stack([np.full(8, 5.0), np.zeros(8), np.zeros(8), rng.standard_normal(8)], -1)
        g = r.copy()
        g[:, 0] += 0.05  # constant channel: error over its magnitude, not its (zero) spread
        g[:, 2] = 1e-6  # all-zero reference, candidate not zero
        reference.append({"x": r[None]})
        candidate.append({"x": g[None]})
    channels = compare_outputs(reference, candidate).outputs[0].channels
    assert [c.basis for c in channels] == ["magnitude", "zero", "zero", "spread"]
    assert channels[0].drop == pytest.approx(0.05**2 / 5.0**2 / 2)
    assert (channels[1].drop, channels[1].interval.high, channels[1].sqnr_db) == (
        0.0,
        0.0,
        math.inf,
    )
    assert (channels[2].drop, channels[2].sqnr_db) == (1.0, -math.inf)
    assert channels[3].drop == 0.0


def test_identical_outputs_drop_nothing_and_serialise() -> None:
    rng = np.random.default_rng(5)
    reference = [{"a": rng.standard_normal((1, 7, 4)), "b": rng.standard_normal((1, 10))}]
    reference += [{k: rng.standard_normal(v.shape) for k, v in reference[0].items()}] * 9
    result = compare_outputs(reference, reference, decisions={"b": "argmax"})
    assert result.drop == 0.0 and (result.drop_interval.low, result.drop_interval.high) == (0, 0)
    assert all(c.sqnr_db == math.inf for o in result.outputs for c in o.channels)
    assert result.outputs[1].channel_axis is None and len(result.outputs[1].channels) == 1
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["samples"] == 10 and data["drop"] == 0.0 and data["worst"]["figure"] == "channel"
    assert data["outputs"][0]["channels"][0]["sqnr_db"] is None  # +inf: exact


def test_argmax_flips_over_the_class_axis() -> None:
    rng = np.random.default_rng(6)
    reference = [{"logits": rng.standard_normal((1, 10))} for _ in range(200)]
    candidate = [{"logits": s["logits"].copy()} for s in reference]
    for s in candidate[:30]:
        s["logits"][0, (np.argmax(s["logits"]) + 1) % 10] += 10.0  # a new winner
    result = compare_outputs(reference, candidate, decisions={"logits": "argmax"})
    decision = result.outputs[0].decision
    assert isinstance(decision, DecisionFigure) and decision.flip_rate == pytest.approx(0.15)
    assert decision.positions == 200 and decision.interval.contains(0.15)
    assert "'logits' argmax changes 15.0%" in result.describe()


def test_channel_axes_override_and_validation() -> None:
    rng = np.random.default_rng(7)
    reference = [{"fmap": rng.standard_normal((1, 3, 4, 4))} for _ in range(10)]
    candidate = [{"fmap": s["fmap"].copy()} for s in reference]
    for s in candidate:
        s["fmap"][0, 1] *= 0.5
    result = compare_outputs(reference, candidate, channel_axes={"fmap": 1})
    assert len(result.outputs[0].channels) == 3 and result.worst.channel == 1
    with pytest.raises(ValueError, match="non-batch axis"):
        compare_outputs(reference, candidate, channel_axes={"fmap": 0})
    with pytest.raises(ValueError, match="do not exist"):
        compare_outputs(reference, candidate, decisions={"fmp": "sign"})
    with pytest.raises(ValueError, match="shapes"):
        compare_outputs(reference, [{"fmap": s["fmap"][:, :2]} for s in candidate])
    with pytest.raises(ValueError, match="batch axis of 1"):
        compare_outputs(
            [{"fmap": s["fmap"][0]} for s in reference], [{"fmap": s["fmap"][0]} for s in candidate]
        )
    with pytest.raises(ValueError, match="channels, not"):
        wider = [*reference[:1], {"fmap": np.zeros((1, 3, 4, 5))}]
        compare_outputs(wider, wider)
    with pytest.raises(ValueError, match="fewer than 2 entries"):
        compare_outputs(
            [{"p": np.ones((1, 1))}], [{"p": np.ones((1, 1))}], decisions={"p": "argmax"}
        )
    with pytest.raises(ValueError, match="at least one sample"):
        compare_outputs([], [])


def test_drop_interval_shrinks_as_one_over_root_n() -> None:
    def width(n: int) -> float:
        rng = np.random.default_rng(n)
        reference, candidate = [], []
        for _ in range(n):
            r = rng.standard_normal((1, 6, 1))
            reference.append({"y": r})
            noise = rng.uniform(0.05, 0.15) * rng.standard_normal(r.shape)  # varies by sample
            candidate.append({"y": r + noise})
        drop = compare_outputs(reference, candidate, resamples=2000).drop_interval
        return drop.high - drop.low

    # 16x the samples: a quarter of the width. Seeded, so it cannot flake; over 20 other seeds
    # the ratio ranged 3.3 to 5.1, hence the margins.
    assert 2.8 < width(100) / width(1600) < 5.8


def test_decision_kind_from_names_and_values() -> None:
    rng = np.random.default_rng(8)
    logits = [rng.standard_normal((1, 10)) for _ in range(3)]
    single = [rng.standard_normal((1, 1)) for _ in range(3)]
    softmax = [np.exp(x) / np.exp(x).sum() for x in logits]
    assert decision_kind("cls_logits", logits) == "argmax"
    assert decision_kind("classLogits", logits) == "argmax"
    assert decision_kind("objectness", single) == "sign"
    assert decision_kind("prob", [1 / (1 + np.exp(-x)) for x in single]) is None  # sigmoid: 0.5
    assert decision_kind("output_0", softmax) == "argmax"
    assert decision_kind("output_0", logits) is None
    assert decision_kind("objects", single) is None  # a word, not a substring
    assert propose_decisions([{"scores": logits[0], "emb": logits[1]}]) == {"scores": "argmax"}


def test_channels_bootstrapped_in_blocks_give_the_same_figures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(9)
    reference = [{"h": rng.standard_normal((1, 5, 7))} for _ in range(40)]
    candidate = [{"h": s["h"] + 0.1 * rng.standard_normal(s["h"].shape)} for s in reference]
    whole = compare_outputs(reference, candidate, resamples=100)
    monkeypatch.setattr(channels, "CHUNK", 300)  # 3 channels per block: 3 blocks for 7
    blocks = compare_outputs(reference, candidate, resamples=100)

    def bounds(result: OutputsComparison) -> list[float]:
        return [b for c in result.outputs[0].channels for b in (c.interval.low, c.interval.high)]

    assert bounds(blocks) == pytest.approx(bounds(whole), rel=1e-12)  # BLAS may round apart
    assert len(set(bounds(whole))) == 14
