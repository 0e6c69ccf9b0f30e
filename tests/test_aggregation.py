"""Aggregation of heterogeneous-rank LoRA factors against hand-computed formulas."""

from __future__ import annotations

import pytest
import torch

from fedspine_ray.strategies.aggregate import (
    AGGREGATORS,
    ClientLoRA,
    InvalidUpdateError,
    get_aggregator,
    normalise_steps,
    svd_factors,
    svd_factors_of_product,
    validate_update,
)

OUT, IN = 5, 4


def _rand(r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, IN, generator=g, dtype=torch.float64), torch.randn(
        OUT, r, generator=g, dtype=torch.float64
    )


def _pad(a, b, r):
    ap = torch.zeros(r, a.shape[1], dtype=a.dtype)
    bp = torch.zeros(b.shape[0], r, dtype=b.dtype)
    ap[: a.shape[0]] = a
    bp[:, : b.shape[1]] = b
    return ap, bp


def test_registry():
    assert {"fedspine", "hetlora", "flexlora", "fedavg"} <= set(AGGREGATORS)
    assert get_aggregator("FlexLoRA").name == "flexlora"
    with pytest.raises(ValueError, match="unknown aggregator"):
        get_aggregator("nope")


def test_hetlora_zero_pad_weighted_mean():
    a1, b1 = _rand(2, 0)
    a2, b2 = _rand(4, 1)
    ups = [ClientLoRA({"q": (a1, b1)}, 10), ClientLoRA({"q": (a2, b2)}, 30)]
    a, b = get_aggregator("hetlora").aggregate(ups, global_rank=4)["q"]
    pa1, pb1 = _pad(a1, b1, 4)
    assert torch.allclose(a, 0.25 * pa1 + 0.75 * a2)
    assert torch.allclose(b, 0.25 * pb1 + 0.75 * b2)
    # rank > global rank is rejected
    with pytest.raises(ValueError, match="global_rank"):
        get_aggregator("hetlora").aggregate(ups, global_rank=2)


def test_hetlora_sparsity_weighted():
    a1, b1 = _rand(2, 0)
    a2, b2 = _rand(4, 1)
    n1, n2 = torch.linalg.matrix_norm(b1 @ a1), torch.linalg.matrix_norm(b2 @ a2)
    w1 = float(n1 / (n1 + n2))
    ups = [ClientLoRA({"q": (a1, b1)}, 10), ClientLoRA({"q": (a2, b2)}, 30)]
    a, _ = get_aggregator("hetlora_sw").aggregate(ups, global_rank=4)["q"]
    assert torch.allclose(a, w1 * _pad(a1, b1, 4)[0] + (1 - w1) * a2)


def test_flexlora_exact_when_rank_suffices():
    a1, b1 = _rand(1, 2)
    a2, b2 = _rand(2, 3)
    ups = [ClientLoRA({"q": (a1, b1)}, 1), ClientLoRA({"q": (a2, b2)}, 3)]
    target = 0.25 * (b1 @ a1) + 0.75 * (b2 @ a2)  # rank <= 3
    a, b = get_aggregator("flexlora").aggregate(ups, global_rank=3)["q"]
    assert a.shape == (3, IN) and b.shape == (OUT, 3)
    assert torch.allclose(b @ a, target, atol=1e-10)
    # truncated: best rank-1 approximation (Eckart-Young)
    a1r, b1r = get_aggregator("flexlora").aggregate(ups, global_rank=1)["q"]
    s = torch.linalg.svdvals(target)
    assert torch.linalg.matrix_norm(target - b1r @ a1r) == pytest.approx(float(s[1:].square().sum().sqrt()))
    # distribute: SVD truncation to rank 2 of the global delta
    d = get_aggregator("flexlora").distribute({"q": (a, b)}, 2)["q"]
    assert d[0].shape == (2, IN)
    assert torch.linalg.matrix_norm(target - d[1] @ d[0]) == pytest.approx(float(s[2:].square().sum().sqrt()))


@pytest.mark.parametrize(("out", "inner", "stacked"), [(48, 20, 12), (20, 48, 12), (6, 5, 16)])
def test_svd_of_a_thin_product_equals_the_dense_svd(out, inner, stacked):
    g = torch.Generator().manual_seed(out + stacked)
    b = torch.randn(out, stacked, generator=g, dtype=torch.float64)
    a = torch.randn(stacked, inner, generator=g, dtype=torch.float64)
    delta = b @ a
    for rank in (1, 3, 8):
        a_dense, b_dense = svd_factors(delta, rank)
        a_thin, b_thin, singular = svd_factors_of_product(b, a, rank)
        assert a_thin.shape == (rank, inner) and b_thin.shape == (out, rank)
        torch.testing.assert_close(b_thin @ a_thin, b_dense @ a_dense, atol=1e-9, rtol=1e-9)
        k = min(rank, out, inner)
        torch.testing.assert_close(singular[:k], torch.linalg.svdvals(delta)[:k])
        # balanced split, as svd_factors: A A^T = B^T B = diag(top singular values)
        torch.testing.assert_close(a_thin @ a_thin.T, b_thin.T @ b_thin, atol=1e-8, rtol=1e-8)


def test_flexlora_distribute_keeps_init_when_delta_zero():
    a = torch.randn(4, IN, dtype=torch.float64)
    b = torch.zeros(OUT, 4, dtype=torch.float64)
    da, db = get_aggregator("flexlora").distribute({"q": (a, b)}, 2)["q"]
    assert torch.equal(da, a[:2]) and torch.count_nonzero(db) == 0


def test_fedavg_requires_equal_ranks():
    a1, b1 = _rand(2, 0)
    a2, b2 = _rand(2, 1)
    ups = [ClientLoRA({"q": (a1, b1)}, 1), ClientLoRA({"q": (a2, b2)}, 1)]
    a, b = get_aggregator("fedavg").aggregate(ups, 2)["q"]
    assert torch.allclose(a, (a1 + a2) / 2) and torch.allclose(b, (b1 + b2) / 2)
    ups.append(ClientLoRA({"q": _rand(3, 2)}, 1))
    with pytest.raises(ValueError, match="heterogeneous ranks"):
        get_aggregator("fedavg").aggregate(ups, 3)


def test_fedspine_coverage_aware_hand_built():
    """Client 1: rank 1, covers rows {0,1,2} and cols {0,1}; client 2: rank 2, full coverage."""
    a1 = torch.tensor([[1.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    b1 = torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0]], dtype=torch.float64)
    a2 = torch.full((2, IN), 4.0, dtype=torch.float64)
    b2 = torch.full((OUT, 2), 2.0, dtype=torch.float64)
    rows1 = torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)
    cols1 = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    ups = [
        ClientLoRA({"q": (a1, b1)}, 10, mask={"q": (rows1, cols1)}),
        ClientLoRA({"q": (a2, b2)}, 30),
    ]
    a, b = get_aggregator("fedspine").aggregate(ups, global_rank=2)["q"]
    # A row 0: cols 0,1 covered by both (10:30), cols 2,3 only by client 2
    assert torch.allclose(
        a[0], torch.tensor([0.25 * 1 + 0.75 * 4, 0.25 * 2 + 0.75 * 4, 4.0, 4.0], dtype=torch.float64)
    )
    # A row 1 (rank slice 1): only client 2 has it -> no dilution by the rank-1 client
    assert torch.allclose(a[1], a2[1])
    # B col 0: rows 0-2 averaged over both, rows 3-4 only client 2; B col 1 only client 2
    expect_b0 = torch.tensor([0.25 + 1.5, 0.25 + 1.5, 0.25 + 1.5, 2.0, 2.0], dtype=torch.float64)
    assert torch.allclose(b[:, 0], expect_b0)
    assert torch.allclose(b[:, 1], b2[:, 1])
    # compare: hetlora dilutes the uncovered coordinates towards zero
    ah, _ = get_aggregator("hetlora").aggregate(ups, global_rank=2)["q"]
    assert ah[1, 0] == pytest.approx(0.75 * 4)


def test_fedspine_uncovered_keeps_previous_and_equals_fedavg_when_full():
    a1, b1 = _rand(2, 4)
    cols = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    a1 = a1 * cols
    prev = (torch.full((2, IN), 9.0, dtype=torch.float64), torch.zeros(OUT, 2, dtype=torch.float64))
    a, _ = get_aggregator("fedspine").aggregate(
        [ClientLoRA({"q": (a1, b1)}, 5, mask={"q": (None, cols)})], 2, previous={"q": prev, "k": prev}
    )["q"]
    assert torch.all(a[:, 1] == 9.0) and torch.allclose(a[:, [0, 2, 3]], a1[:, [0, 2, 3]])
    ups = [ClientLoRA({"q": _rand(3, s)}, n) for s, n in ((5, 2), (6, 7), (7, 1))]
    f = get_aggregator("fedspine").aggregate(ups, 3)["q"]
    g = get_aggregator("fedavg").aggregate(ups, 3)["q"]
    assert torch.allclose(f[0], g[0]) and torch.allclose(f[1], g[1])
    d = get_aggregator("fedspine").distribute({"q": f}, 2)["q"]
    assert torch.equal(d[0], f[0][:2]) and torch.equal(d[1], f[1][:, :2])


def test_validate_update_messages():
    shapes = {"layer.0.q": (OUT, IN)}
    validate_update({"layer.0.q": _rand(2, 0)}, shapes, client=3)
    a, b = _rand(2, 0)
    a[0, 0] = float("nan")
    with pytest.raises(InvalidUpdateError, match=r"client 3, module 'layer.0.q'.*NaN/Inf"):
        validate_update({"layer.0.q": (a, b)}, shapes, client=3)
    a, b = _rand(2, 0)
    b[1, 1] = float("inf")
    with pytest.raises(InvalidUpdateError, match=r"'layer.0.q': B .*NaN/Inf"):
        validate_update({"layer.0.q": (a, b)}, shapes, client=3)
    with pytest.raises(InvalidUpdateError, match=r"module 'layer.0.q': wrong shape A \(2, 3\)"):
        validate_update({"layer.0.q": (torch.zeros(2, 3), torch.zeros(OUT, 2))}, shapes, client="c7")
    with pytest.raises(InvalidUpdateError, match="unknown LoRA module"):
        validate_update({"layer.9.q": _rand(2, 0)}, shapes)
    with pytest.raises(InvalidUpdateError, match="rank 4 outside"):
        validate_update({"layer.0.q": _rand(4, 0)}, shapes, max_rank=2)
    with pytest.raises(InvalidUpdateError, match="global shape"):
        get_aggregator("hetlora").aggregate(
            [
                ClientLoRA({"q": _rand(2, 0)}, 1),
                ClientLoRA({"q": (torch.zeros(2, 3), torch.zeros(OUT, 2))}, 1),
            ],
            2,
        )


def _delta(factors, name="m"):
    a, b = factors[name]
    return (b.double() @ a.double()).float()


def test_flexlora_coverage_is_flexlora_when_everyone_covers_everything():
    torch.manual_seed(0)
    updates = [
        ClientLoRA({"m": (torch.randn(r, 6), torch.randn(5, r))}, n, client_id=i)
        for i, (r, n) in enumerate([(2, 10), (4, 30)])
    ]
    plain = get_aggregator("flexlora").aggregate(updates, 6)
    covered = get_aggregator("flexlora_coverage").aggregate(updates, 6)
    assert torch.allclose(_delta(plain), _delta(covered), atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1])
def test_flexlora_coverage_counts_a_lacking_client_as_leaving_the_unit_unchanged(axis):
    torch.manual_seed(1)
    out_f, in_f = 6, 5
    full = (torch.randn(3, in_f), torch.randn(out_f, 3))
    kept = torch.tensor([True, False, True, True, False, True][: (out_f if axis == 0 else in_f)])
    pruned_a, pruned_b = torch.randn(3, in_f), torch.randn(out_f, 3)
    # the pruned client's sub-model lacked some rows (axis 0) or columns (axis 1): it sends zeros there
    if axis == 0:
        pruned_b = pruned_b * kept[:, None]
        mask = (kept, None)
    else:
        pruned_a = pruned_a * kept[None, :]
        mask = (None, kept)
    updates = [
        ClientLoRA({"m": full}, 10, client_id=0),
        ClientLoRA({"m": (pruned_a, pruned_b)}, 30, mask={"m": mask}, client_id=1),
    ]
    previous = {"m": (torch.randn(3, in_f), torch.randn(out_f, 3))}
    delta = _delta(get_aggregator("flexlora_coverage").aggregate(updates, 6, previous=previous))
    d_full, d_pruned = full[1] @ full[0], pruned_b @ pruned_a
    d_prev = previous["m"][1] @ previous["m"][0]
    # where the pruned client lacked the unit it counts as returning the previous delta it was given
    expected = torch.where(
        kept[:, None] if axis == 0 else kept[None, :],
        0.25 * d_full + 0.75 * d_pruned,
        0.25 * d_full + 0.75 * d_prev,
    )
    assert torch.allclose(delta, expected, atol=1e-5)  # plain FlexLoRA would give 0.25 d_full off coverage
    diluted = _delta(get_aggregator("flexlora").aggregate(updates, 6))
    assert not torch.allclose(diluted, expected, atol=1e-3)


def test_flexlora_coverage_keeps_the_previous_delta_where_nobody_trained():
    torch.manual_seed(2)
    kept = torch.tensor([True, True, False, False])
    a, b = torch.randn(2, 3), torch.randn(4, 2) * kept[:, None]
    previous = {"m": (torch.randn(4, 3), torch.randn(4, 4))}
    result = get_aggregator("flexlora_coverage").aggregate(
        [ClientLoRA({"m": (a, b)}, 5, mask={"m": (kept, None)})], 4, previous=previous
    )
    prev_delta = _delta(previous)
    expected = torch.where(kept[:, None], b @ a, prev_delta)
    assert torch.allclose(_delta(result), expected, atol=1e-5)


def _fednova_by_hand(finals, starts, weights, steps):
    """x_0 + tau_eff * sum_i p_i (x_i - x_0,i) / tau_i, written out for one tensor per client."""
    p = [w / sum(weights) for w in weights]
    tau_eff = sum(pi * t for pi, t in zip(p, steps, strict=True))
    change = sum(pi * (x - x0) / t for pi, x, x0, t in zip(p, finals, starts, steps, strict=True))
    return starts[0] + tau_eff * change


def test_step_normalised_fedavg_matches_fednova_by_hand():
    """Two clients started from the same adapter; one ran 4 local steps, one 16 (rounds.fill)."""
    start = _rand(3, 0)
    finals = [_rand(3, 1), _rand(3, 2)]
    weights, steps = [10, 30], [4, 16]
    updates = [ClientLoRA({"m": f}, n) for f, n in zip(finals, weights, strict=True)]
    starts = [{"m": start}, {"m": start}]
    agg = get_aggregator("fedavg")
    a, b = agg.aggregate(normalise_steps(updates, starts, steps, agg), 3)["m"]
    assert torch.allclose(
        a, _fednova_by_hand([f[0] for f in finals], [start[0]] * 2, weights, steps), atol=1e-6
    )
    assert torch.allclose(
        b, _fednova_by_hand([f[1] for f in finals], [start[1]] * 2, weights, steps), atol=1e-6
    )
    # the 16-step client no longer pulls 4x as hard: its change counts (tau_eff / 16) as much as FedAvg gives it
    plain_a, _ = agg.aggregate(updates, 3)["m"]
    assert not torch.allclose(plain_a, a)
    # equal steps: FedNova is FedAvg exactly
    same = normalise_steps(updates, starts, [8, 8], agg)
    assert all(s is u for s, u in zip(same, updates, strict=True))


def test_step_normalised_flexlora_matches_fednova_on_the_deltas():
    """Delta-averaging rules rescale B A (stacked factors, exact); SVD with enough rank loses nothing."""
    starts = [_rand(2, 10), _rand(3, 11)]  # heterogeneous ranks: each client's own start adapter
    finals = [_rand(2, 12), _rand(3, 13)]
    weights, steps = [5, 15], [12, 3]
    updates = [ClientLoRA({"m": f}, n) for f, n in zip(finals, weights, strict=True)]
    agg = get_aggregator("flexlora")
    normalised = normalise_steps(updates, [{"m": s} for s in starts], steps, agg)
    assert normalised[0].factors["m"][0].shape[0] == 4  # stacked: twice the client's rank
    a, b = agg.aggregate(normalised, global_rank=10)["m"]
    p = [w / sum(weights) for w in weights]
    tau_eff = sum(pi * t for pi, t in zip(p, steps, strict=True))
    expected = sum(
        pi * (s[1] @ s[0] + tau_eff / t * (f[1] @ f[0] - s[1] @ s[0]))
        for pi, s, f, t in zip(p, starts, finals, steps, strict=True)
    )
    assert torch.allclose(b @ a, expected, atol=1e-5)
    with pytest.raises(ValueError, match=">= 1"):
        normalise_steps(updates, [{"m": s} for s in starts], [0, 3], agg)
