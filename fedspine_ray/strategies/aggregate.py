"""Server-side aggregation of LoRA adapters with heterogeneous ranks (and pruned coverage).

Convention (all aggregators): for every target module ``name`` a client sends ``(A, B)`` with
``A: [r, in]`` and ``B: [out, r]`` in *global* (unpruned) coordinates, so ``delta W = B @ A``
(``lora_alpha / r`` scaling already folded into ``B`` by the caller). Ranks ``r`` may differ across
clients. A client whose pruned sub-model lacked some output rows / input columns sends zeros there
and declares it in ``ClientLoRA.mask``.

Registry :data:`AGGREGATORS` (``get_aggregator(name)``):

* ``fedspine``: zero-padding to the global rank (as in HetLoRA) with *coverage-aware*, sample-weighted
  averaging: every coordinate of ``A`` and ``B`` is averaged only over the clients that actually
  trained it (client rank large enough *and* row/column kept by its pruned sub-model). This is the
  FedSpine setting (arXiv 2501.02438: devices train LoRA on differently pruned sub-models with
  different ranks); without coverage weighting, pruned-away coordinates and missing rank slices would
  be diluted towards zero by every device that did not have them.
* ``hetlora`` (Cho et al. 2024): zero-pad ``A``/``B`` to the max rank, sample-weighted mean of ``A``
  and ``B`` separately. ``hetlora_sw``: HetLoRA's sparsity-weighted variant, weights ``∝ ||B_i A_i||_F``.
* ``flexlora`` (Bai et al. 2024): sample-weighted mean of the full deltas ``B_i A_i``, then truncated
  SVD back to the global rank: ``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T``.
* ``flexlora_coverage``: FlexLoRA where a client whose pruned sub-model lacked a unit counts as leaving
  that unit's previous global delta unchanged, instead of as setting it to zero; FlexLoRA exactly when
  every client covers everything.
* ``fedavg``: plain sample-weighted mean, all ranks must be equal.
* ``flora`` (Wang et al., NeurIPS 2024): stacking, ``A = [p_1 A_1; ...; p_K A_K]``, ``B = [B_1 ... B_K]``, so
  ``B A = sum_k p_k B_k A_k`` exactly at rank ``sum_k r_k``; FLoRA merges it into the base every round.

``distribute(global_factors, rank)`` gives a client of rank ``r`` its initial adapter for the round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedspine_ray.pruning.lora_mapping import Factors

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "ClientLoRA",
    "CoverageFlexLoRAAggregator",
    "FLoRAAggregator",
    "FedAvgAggregator",
    "FedSpineAggregator",
    "FlexLoRAAggregator",
    "HetLoRAAggregator",
    "InvalidUpdateError",
    "get_aggregator",
    "lora_deltas",
    "normalise_steps",
    "svd_factors",
    "svd_factors_of_product",
    "average_states",
    "validate_head",
    "validate_update",
    "weighted_mean",
]


ModuleMask = tuple["Tensor | None", "Tensor | None"]


class InvalidUpdateError(ValueError):
    """A client's LoRA update is malformed (wrong shape, NaN/Inf, unknown module)."""


@dataclass
class ClientLoRA:
    """One client's uploaded adapter.

    Attributes:
        factors: ``module -> (A [r, in], B [out, r])`` in global coordinates.
        num_samples: local training samples (aggregation weight), > 0.
        mask: optional ``module -> (row_mask [out] | None, col_mask [in] | None)`` boolean tensors
            marking the global output rows / input columns the client's pruned sub-model covered
            (``None`` or a missing entry = fully covered). Used by ``fedspine`` only.
        client_id: for error messages.
    """

    factors: Mapping[str, tuple[Tensor, Tensor]]
    num_samples: int
    mask: Mapping[str, ModuleMask] | None = None
    client_id: int | str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.num_samples, (int, float)) and self.num_samples > 0):
            raise ValueError(f"client {self.client_id}: num_samples must be > 0, got {self.num_samples!r}")


def _who(client: int | str | None) -> str:
    return f"client {client}" if client is not None else "client update"


def validate_update(
    factors: Mapping[str, tuple[Tensor, Tensor]],
    expected_shapes: Mapping[str, tuple[int, int]],
    client: int | str | None = None,
    max_rank: int | None = None,
    allow_missing: bool = True,
) -> None:
    """Raise :class:`InvalidUpdateError` if ``factors`` cannot be aggregated.

    ``expected_shapes[module] = (out, in)`` is the global shape of ``delta W``. Checks: known module
    names, 2-D ``A [r, in]`` / ``B [out, r]`` with matching ``r`` (``1 <= r <= max_rank``), and
    finite values. Messages name the client and module and say how to fix the update.
    """
    who = _who(client)
    unknown = sorted(set(factors) - set(expected_shapes))
    if unknown:
        raise InvalidUpdateError(
            f"{who}: unknown LoRA module(s) {unknown[:5]}; expected names from the global model's target "
            f"modules (e.g. {sorted(expected_shapes)[:3]}). Map sub-model names back to global names."
        )
    if not allow_missing:
        missing = sorted(set(expected_shapes) - set(factors))
        if missing:
            raise InvalidUpdateError(f"{who}: missing LoRA module(s) {missing[:5]}")
    for name, pair in factors.items():
        out_f, in_f = expected_shapes[name]
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise InvalidUpdateError(
                f"{who}, module {name!r}: expected a pair (A, B), got {type(pair).__name__}"
            )
        a, b = pair
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() != 2 or b.dim() != 2:
            raise InvalidUpdateError(
                f"{who}, module {name!r}: A and B must be 2-D tensors (A [r, {in_f}], B [{out_f}, r]), got "
                f"{getattr(a, 'shape', type(a))} and {getattr(b, 'shape', type(b))}"
            )
        r = a.shape[0]
        if a.shape[1] != in_f or b.shape[0] != out_f or b.shape[1] != r:
            raise InvalidUpdateError(
                f"{who}, module {name!r}: wrong shape A {tuple(a.shape)}, B {tuple(b.shape)}; expected "
                f"A [r, {in_f}] and B [{out_f}, r] for the model it was sent (the client trained a different "
                f"sub-model, or sub-model factors were not scattered back with lora_to_global); the update "
                f"is dropped."
            )
        if r < 1 or (max_rank is not None and r > max_rank):
            raise InvalidUpdateError(f"{who}, module {name!r}: rank {r} outside [1, {max_rank}]")
        for label, t in (("A", a), ("B", b)):
            if not torch.isfinite(t).all():
                n_bad = int((~torch.isfinite(t)).sum())
                raise InvalidUpdateError(
                    f"{who}, module {name!r}: {label} {tuple(t.shape)} contains {n_bad} NaN/Inf value(s); "
                    f"the local training diverged -- lower the learning rate / enable gradient clipping, or "
                    f"drop this update for the round."
                )


def lora_deltas(factors: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """``module -> B @ A``."""
    return {n: b @ a for n, (a, b) in factors.items()}


def _pad_rank(a: Tensor, b: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    r = a.shape[0]
    if r == rank:
        return a, b
    if r > rank:
        return a[:rank], b[:, :rank]
    a_p = torch.zeros(rank, a.shape[1], dtype=a.dtype, device=a.device)
    b_p = torch.zeros(b.shape[0], rank, dtype=b.dtype, device=b.device)
    a_p[:r] = a
    b_p[:, :r] = b
    return a_p, b_p


def svd_factors(delta: Tensor, rank: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factorisation of ``delta`` (Eckart-Young): ``B = U_r sqrt(S_r)``,
    ``A = sqrt(S_r) V_r^T`` (balanced split of the singular values). Zero-padded if ``rank`` exceeds
    ``min(out, in)``. Computed in float64 for accuracy."""
    dtype = dtype or delta.dtype
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    k = min(rank, s.shape[0])
    sq = s[:k].sqrt()
    b = u[:, :k] * sq
    a = sq[:, None] * vh[:k]
    a, b = _pad_rank(a, b, rank)
    return a.to(dtype), b.to(dtype)


def svd_factors_of_product(
    b: Tensor, a: Tensor, rank: int, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`svd_factors` of ``b @ a`` without forming it: ``b`` [out, R], ``a`` [R, in] with small ``R``.

    Why: LoRA deltas are sums of thin products (``sum_i w_i B_i A_i = [w_1 B_1 ...] @ [A_1; ...]``), and a full
    SVD of each dense ``out x in`` delta in float64 costs O(out * in * min(out, in)) per module: on SmolLM2 it
    was most of the server's round. With QR factorisations ``b = Q_b R_b`` and ``a^T = Q_a R_a`` the delta is
    ``Q_b (R_b R_a^T) Q_a^T``, so the SVD of the small ``R x R`` core gives the same singular values and
    vectors (up to sign) in O((out + in) R^2). Returns ``(A, B, singular values)``.
    """
    dtype = dtype or a.dtype
    q_b, r_b = torch.linalg.qr(b.to(torch.float64))
    q_a, r_a = torch.linalg.qr(a.to(torch.float64).T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    k = min(rank, s.shape[0])
    sq = s[:k].sqrt()
    b_k = (q_b @ u[:, :k]) * sq
    a_k = sq[:, None] * (vh[:k] @ q_a.T)
    a_k, b_k = _pad_rank(a_k, b_k, rank)
    return a_k.to(dtype), b_k.to(dtype), s


def _modules(updates: Sequence[ClientLoRA]) -> list[str]:
    names: dict[str, None] = {}
    for u in updates:
        for n in u.factors:
            names.setdefault(n, None)
    return list(names)


def _shape(updates: Sequence[ClientLoRA], name: str) -> tuple[int, int]:
    shapes = {
        (u.factors[name][1].shape[0], u.factors[name][0].shape[1]) for u in updates if name in u.factors
    }
    if len(shapes) != 1:
        raise InvalidUpdateError(
            f"module {name!r}: clients disagree on the global shape (out, in): {sorted(shapes)}; factors must "
            f"be in global coordinates"
        )
    return shapes.pop()


class Aggregator:
    """Base class: ``aggregate`` (server merge) and ``distribute`` (server -> client of rank r)."""

    name = "base"
    #: What the rule averages: the ``factors`` A and B themselves, or the ``products`` B A (deltas). Step
    #: normalisation (:func:`normalise_steps`) rescales whichever it is.
    averages = "factors"

    def aggregate(
        self,
        updates: Sequence[ClientLoRA],
        global_rank: int,
        previous: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    ) -> Factors:
        """Merge client updates into global factors of rank ``global_rank``.

        ``previous`` (the current global factors) is optional: modules no client sent are carried
        over from it, and ``fedspine`` keeps its value on coordinates no client covered.
        """
        if not updates:
            raise ValueError(f"{self.name}: no client updates to aggregate")
        if global_rank < 1:
            raise ValueError(f"{self.name}: global_rank must be >= 1, got {global_rank}")
        out: Factors = {}
        for name in _modules(updates):
            having = [u for u in updates if name in u.factors]
            for u in having:
                a, b = u.factors[name]
                if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                    raise InvalidUpdateError(
                        f"{_who(u.client_id)}, module {name!r}: A {tuple(a.shape)} / B {tuple(b.shape)} are "
                        f"not LoRA factors A [r, in], B [out, r]"
                    )
            _shape(having, name)
            prev = previous.get(name) if previous is not None else None
            out[name] = self._aggregate_module(name, having, global_rank, prev)
        if previous is not None:
            for name, pair in previous.items():
                out.setdefault(name, (pair[0].clone(), pair[1].clone()))
        return out

    def _aggregate_module(
        self, name: str, updates: Sequence[ClientLoRA], rank: int, prev: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def distribute(self, global_factors: Mapping[str, tuple[Tensor, Tensor]], rank: int) -> Factors:
        """Default: keep the first ``rank`` rank-slices (consistent with index-aligned zero padding)."""
        if rank < 1:
            raise ValueError(f"{self.name}: rank must be >= 1, got {rank}")
        return {n: tuple(t.clone() for t in _pad_rank(a, b, rank)) for n, (a, b) in global_factors.items()}  # type: ignore[misc]

    @staticmethod
    def _sample_weights(updates: Sequence[ClientLoRA]) -> list[float]:
        total = float(sum(u.num_samples for u in updates))
        return [u.num_samples / total for u in updates]

    def _check_ranks(self, name: str, updates: Sequence[ClientLoRA], rank: int) -> None:
        for u in updates:
            r = u.factors[name][0].shape[0]
            if r > rank:
                raise ValueError(
                    f"{self.name}: {_who(u.client_id)}, module {name!r} has rank {r} > global_rank {rank}; "
                    f"the global rank must be the maximum client rank"
                )


class HetLoRAAggregator(Aggregator):
    """HetLoRA: zero-pad to ``global_rank`` and average ``A`` and ``B`` separately.

    ``sparsity_weighted=False``: weights ``n_i / sum n``; ``True``: HetLoRA's sparsity-weighted
    aggregation, weights ``||B_i A_i||_F / sum_j ||B_j A_j||_F`` (clients whose update carries more
    energy count more, damping the dilution by low-rank/near-zero updates). Masks are ignored.
    """

    def __init__(self, sparsity_weighted: bool = False) -> None:
        self.sparsity_weighted = sparsity_weighted
        self.name = "hetlora_sw" if sparsity_weighted else "hetlora"

    def _aggregate_module(self, name, updates, rank, prev):  # type: ignore[no-untyped-def]
        self._check_ranks(name, updates, rank)
        if self.sparsity_weighted:
            norms = [
                float(torch.linalg.matrix_norm(b.double() @ a.double()))
                for a, b in (u.factors[name] for u in updates)
            ]
            total = sum(norms)
            weights = [x / total for x in norms] if total > 0 else self._sample_weights(updates)
        else:
            weights = self._sample_weights(updates)
        a0, b0 = updates[0].factors[name]
        acc_a = torch.zeros(rank, a0.shape[1], dtype=torch.float64)
        acc_b = torch.zeros(b0.shape[0], rank, dtype=torch.float64)
        for w, u in zip(weights, updates, strict=True):
            a, b = _pad_rank(*u.factors[name], rank)
            acc_a += w * a.double()
            acc_b += w * b.double()
        return acc_a.to(a0.dtype), acc_b.to(b0.dtype)


class FlexLoRAAggregator(Aggregator):
    """FlexLoRA: ``delta = sum_i w_i B_i A_i`` (``w_i = n_i / sum n``), then truncated SVD to
    ``global_rank``. Exact whenever ``rank(delta) <= global_rank``. Masks are ignored."""

    name = "flexlora"
    averages = "products"

    def _aggregate_module(self, name, updates, rank, prev):  # type: ignore[no-untyped-def]
        weights = self._sample_weights(updates)
        a0 = updates[0].factors[name][0]
        stacked_b = torch.cat(
            [w * u.factors[name][1].double() for w, u in zip(weights, updates, strict=True)], 1
        )
        stacked_a = torch.cat([u.factors[name][0].double() for u in updates], 0)
        a, b, _ = svd_factors_of_product(stacked_b, stacked_a, rank, dtype=a0.dtype)
        return a, b

    def distribute(self, global_factors: Mapping[str, tuple[Tensor, Tensor]], rank: int) -> Factors:
        """SVD-truncate each global delta to ``rank`` (FlexLoRA's per-client redistribution).

        If the global delta is (numerically) zero -- e.g. the very first round, where LoRA starts with
        ``B = 0`` -- SVD would return ``A = B = 0`` and the adapter could never learn (both gradients
        vanish), so we fall back to slicing the given factors, which keeps the random ``A`` init.
        """
        if rank < 1:
            raise ValueError(f"flexlora: rank must be >= 1, got {rank}")
        out: Factors = {}
        for n, (a, b) in global_factors.items():
            a_r, b_r, singular = svd_factors_of_product(b, a, rank, dtype=a.dtype)
            if singular.numel() == 0 or float(singular.max()) <= 1e-12:
                a_r, b_r = _pad_rank(a, b, rank)
                a_r, b_r = a_r.clone(), b_r.clone()
            out[n] = (a_r, b_r)
        return out


class FedAvgAggregator(Aggregator):
    """FedAvg on LoRA factors: sample-weighted means of ``A`` and ``B``; all ranks must equal ``global_rank``."""

    name = "fedavg"

    def _aggregate_module(self, name, updates, rank, prev):  # type: ignore[no-untyped-def]
        ranks = sorted({u.factors[name][0].shape[0] for u in updates})
        if ranks != [rank]:
            raise ValueError(
                f"fedavg: module {name!r} has client ranks {ranks} but needs every client at global_rank "
                f"{rank}; use 'hetlora', 'flexlora' or 'fedspine' for heterogeneous ranks"
            )
        weights = self._sample_weights(updates)
        a0, b0 = updates[0].factors[name]
        acc_a = sum(w * u.factors[name][0].double() for w, u in zip(weights, updates, strict=True))
        acc_b = sum(w * u.factors[name][1].double() for w, u in zip(weights, updates, strict=True))
        return acc_a.to(a0.dtype), acc_b.to(b0.dtype)  # type: ignore[union-attr]


class FLoRAAggregator(Aggregator):
    """FLoRA's stacking (Wang et al., NeurIPS 2024): concatenate the clients' factors instead of averaging them.

    With sample weights ``p_k = n_k / sum n`` (over the clients that sent the module)::

        A = [p_1 A_1; p_2 A_2; ...; p_K A_K]   [sum r_k, in]
        B = [B_1, B_2, ..., B_K]               [out, sum r_k]
        B A = sum_k p_k B_k A_k                (exactly: no cross terms B_j A_k, unlike averaging A and B)

    ``p_k`` multiplies ``A`` only, as in the authors' code (ATP-1010/FederatedLLM, model_aggregation.py):
    weighting both factors would give ``p_k^2``. Ranks may differ across clients, and the result's rank is
    ``sum r_k``: ``global_rank`` is not used, because FLoRA merges the stacked adapter into the base right away
    (strategies/flora.py) and starts fresh adapters. Coverage masks are ignored: a client's factors are zero
    outside its sub-model's units, so its product contributes nothing there. ``distribute`` is the default
    slice, but FLoRA hands every client fresh adapters instead.
    """

    name = "flora"
    averages = "products"

    def _aggregate_module(self, name, updates, rank, prev):  # type: ignore[no-untyped-def]
        weights = self._sample_weights(updates)
        a0, b0 = updates[0].factors[name]
        stacked_a = torch.cat(
            [w * u.factors[name][0].double() for w, u in zip(weights, updates, strict=True)], 0
        )
        stacked_b = torch.cat([u.factors[name][1].double() for u in updates], 1)
        return stacked_a.to(a0.dtype), stacked_b.to(b0.dtype)


class CoverageFlexLoRAAggregator(FlexLoRAAggregator):
    """FlexLoRA in which a client leaves the units its pruned sub-model lacked as it got them.

    A client trained on a pruned sub-model sends zeros for the output rows / input columns it lacked.
    Plain FlexLoRA averages those zeros in, and because its average *replaces* the global adapter, every
    round a unit's delta shrinks by the weight of the clients that did not have it: what earlier rounds
    learned there is erased. Here a client's delta counts as the global delta it was given (``prev``)
    wherever it did not train, exactly as in FedAvg a client returns untouched parameters unchanged. With
    coverage ``rho_i`` (rows), ``kappa_i`` (columns) and sample weights ``w_i`` (summing to 1)::

        delta = sum_i w_i [rho_i kappa_i^T * (B_i A_i) + (1 - rho_i kappa_i^T) * prev]
              = sum_i w_i B_i A_i + prev - sum_i w_i (rho_i * B_prev)(A_prev * kappa_i)

    (client factors already hold zeros outside their coverage). Each coordinate is a convex combination
    of client values and the previous one, so nothing is amplified: normalising by coverage instead
    (averaging only over the clients that had a unit) was tried and let a unit trained by one small
    client swing the global model (the test accuracy of the shipped config fell from 0.63 to 0.36 within
    two rounds). Everything stays a thin product, so the SVD back to the global rank costs what
    FlexLoRA's does. With full coverage, or without ``prev``, it is FlexLoRA exactly.
    """

    name = "flexlora_coverage"

    def _aggregate_module(self, name, updates, rank, prev):  # type: ignore[no-untyped-def]
        weights = self._sample_weights(updates)
        a0, b0 = updates[0].factors[name]
        out_f, in_f = b0.shape[0], a0.shape[1]
        bs = [w * u.factors[name][1].double() for w, u in zip(weights, updates, strict=True)]
        as_ = [u.factors[name][0].double() for u in updates]
        if prev is not None:
            pa, pb = prev[0].double(), prev[1].double()
            untouched = 1.0  # weight of the previous delta on coordinates every client covered
            for w, u in zip(weights, updates, strict=True):
                rows, cols = _module_coverage(u, name, out_f, in_f)
                if bool(rows.all()) and bool(cols.all()):
                    untouched -= w
                else:
                    bs.append(-w * rows[:, None] * pb)
                    as_.append(pa * cols)
            if abs(untouched) > 1e-12:
                bs.append(untouched * pb)
                as_.append(pa)
        a, b, _ = svd_factors_of_product(torch.cat(bs, 1), torch.cat(as_, 0), rank, dtype=a0.dtype)
        return a, b


def _module_coverage(update: ClientLoRA, name: str, out_f: int, in_f: int) -> tuple[Tensor, Tensor]:
    """(row, column) coverage of ``update``'s module ``name`` as 0/1 float64 vectors; errors name the client."""
    mask = update.mask.get(name) if update.mask is not None else None
    try:
        return _coverage(mask, out_f, 0), _coverage(mask, in_f, 1)
    except InvalidUpdateError as e:
        raise InvalidUpdateError(f"{_who(update.client_id)}, module {name!r}: {e}") from None


def _coverage(mask: ModuleMask | None, size: int, axis: int) -> Tensor:
    m = None if mask is None else mask[axis]
    if m is None:
        return torch.ones(size, dtype=torch.float64)
    m = torch.as_tensor(m)
    if m.shape != (size,):
        raise InvalidUpdateError(
            f"coverage mask has shape {tuple(m.shape)}, expected ({size},) for the {'rows' if axis == 0 else 'cols'}"
        )
    return m.to(torch.float64).ne(0).to(torch.float64)


class FedSpineAggregator(Aggregator):
    """Coverage-aware, sample-weighted zero-padding aggregation (FedSpine's heterogeneous setting).

    For client ``i`` with rank ``r_i``, samples ``n_i``, row mask ``rho_i`` (out) and column mask
    ``kappa_i`` (in), the coverage indicators are ``c^A_i[k, j] = 1[k < r_i] kappa_i[j]`` and
    ``c^B_i[o, k] = rho_i[o] 1[k < r_i]`` and

        ``A[k, j] = sum_i n_i c^A_i[k, j] A_i[k, j] / sum_i n_i c^A_i[k, j]``  (same for ``B``).

    A coordinate nobody covered keeps its ``previous`` global value (or 0 without ``previous``).
    With full masks and equal ranks this is exactly FedAvg; with full masks and mixed ranks it is
    HetLoRA's zero-padding *without* the dilution of the high-rank slices by low-rank clients.
    ``distribute`` keeps the first ``r`` rank slices (index-aligned with the padding).
    """

    name = "fedspine"

    def _aggregate_module(self, name, updates, rank, prev):  # type: ignore[no-untyped-def]
        self._check_ranks(name, updates, rank)
        a0, b0 = updates[0].factors[name]
        out_f, in_f = b0.shape[0], a0.shape[1]
        num_a = torch.zeros(rank, in_f, dtype=torch.float64)
        den_a = torch.zeros(rank, in_f, dtype=torch.float64)
        num_b = torch.zeros(out_f, rank, dtype=torch.float64)
        den_b = torch.zeros(out_f, rank, dtype=torch.float64)
        for u in updates:
            a, b = u.factors[name]
            r = a.shape[0]
            rows, cols = _module_coverage(u, name, out_f, in_f)
            ca = cols.expand(r, in_f) * float(u.num_samples)
            cb = rows[:, None].expand(out_f, r) * float(u.num_samples)
            num_a[:r] += ca * a.double()
            den_a[:r] += ca
            num_b[:, :r] += cb * b.double()
            den_b[:, :r] += cb
        if prev is not None:
            pa, pb = _pad_rank(prev[0].double(), prev[1].double(), rank)
        else:
            pa, pb = torch.zeros_like(num_a), torch.zeros_like(num_b)
        a_new = torch.where(den_a > 0, num_a / den_a.clamp_min(1e-300), pa)
        b_new = torch.where(den_b > 0, num_b / den_b.clamp_min(1e-300), pb)
        return a_new.to(a0.dtype), b_new.to(b0.dtype)


#: name -> aggregator instance.
AGGREGATORS: dict[str, Aggregator] = {
    "fedspine": FedSpineAggregator(),
    "hetlora": HetLoRAAggregator(),
    "hetlora_sw": HetLoRAAggregator(sparsity_weighted=True),
    "flexlora": FlexLoRAAggregator(),
    "flexlora_coverage": CoverageFlexLoRAAggregator(),
    "fedavg": FedAvgAggregator(),
    "flora": FLoRAAggregator(),
}


def get_aggregator(name: str) -> Aggregator:
    """Look up an aggregator by name (case-insensitive); ``ValueError`` lists the valid names."""
    key = name.lower().replace("-", "_")
    if key not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[key]


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weighted_mean: weights must sum to a positive number")
    return sum(t * (w / total) for t, w in zip(tensors, weights, strict=True))


def average_states(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Sample-weighted FedAvg of same-shaped tensor dicts (used for the full classification head)."""
    return {key: weighted_mean([s[key] for s in states], weights) for key in states[0]}


def validate_head(
    head: Mapping[str, Tensor], reference: Mapping[str, Tensor], client: int | str | None = None
) -> None:
    """The head comes back with the same keys and shapes it was sent with, and finite."""
    for name, tensor in reference.items():
        got = head.get(name)
        if got is None or got.shape != tensor.shape:
            raise InvalidUpdateError(
                f"{_who(client)}: head parameter {name!r} has shape "
                f"{None if got is None else tuple(got.shape)}, expected {tuple(tensor.shape)}"
            )
        if not torch.isfinite(got).all():
            raise InvalidUpdateError(
                f"{_who(client)}: head parameter {name!r} contains NaN/Inf; lower training.lr"
            )


def normalise_steps(
    updates: Sequence[ClientLoRA], starts: Sequence[Factors], steps: Sequence[int], aggregator: Aggregator
) -> list[ClientLoRA]:
    """Client updates rescaled so that ``aggregator`` applies FedNova's step-normalised rule.

    FedNova (Wang et al., NeurIPS 2020): a client that ran ``tau_i`` local steps moved ``tau_i`` times as far
    as a one-step client would have, so plain sample-weighted averaging over clients that ran 4 and 16 steps
    (``rounds.fill``) pulls the global model towards the many-step clients' data. FedNova averages each
    client's change per step and rescales by the effective step count ``tau_eff = sum_i p_i tau_i``::

        x_new = x_0 + tau_eff * sum_i p_i (x_i - x_0) / tau_i

    with sample weights ``p_i``. Every aggregator here is a sample-weighted average of something linear in
    the client's result - the factors A and B (fedavg, hetlora, fedspine) or the product B A (flexlora,
    flexlora_coverage) - so giving it ``x_0,i + c_i (x_i - x_0,i)`` with ``c_i = tau_eff / tau_i`` applies the
    rule. ``x_0,i`` is what the client started from (``starts``, global coordinates: zero where its sub-model
    had no units, so coverage stays what it was). For products the rescaled delta
    ``c_i B_i A_i + (1 - c_i) B_0 A_0`` is written as stacked factors ``[c_i B_i, (1 - c_i) B_0] [A_i; A_0]``,
    exact at twice the client's rank (the aggregator's SVD truncates to the global rank as always). With
    equal step counts every ``c_i`` is 1 and the updates are returned unchanged.
    """
    if not (len(updates) == len(starts) == len(steps)):
        raise ValueError("normalise_steps: one start and one step count per update")
    if any(t < 1 for t in steps):
        raise ValueError(f"normalise_steps: local step counts must be >= 1, got {list(steps)}")
    total = float(sum(u.num_samples for u in updates))
    tau_eff = sum(u.num_samples / total * t for u, t in zip(updates, steps, strict=True))
    out = []
    for update, start, tau in zip(updates, starts, steps, strict=True):
        c = tau_eff / tau
        if abs(c - 1.0) < 1e-12:
            out.append(update)
            continue
        factors: Factors = {}
        for name, (a, b) in update.factors.items():
            a0, b0 = start[name]
            if aggregator.averages == "products":
                factors[name] = (
                    torch.cat([a, a0.to(a.dtype)], 0),
                    torch.cat([c * b, (1.0 - c) * b0.to(b.dtype)], 1),
                )
            else:
                factors[name] = (a0 + c * (a - a0), b0 + c * (b - b0))
        out.append(ClientLoRA(factors, update.num_samples, update.mask, update.client_id))
    return out
