"""S-UCB vs the grid D-UCB on synthetic smooth rewards: how good are the first rounds?

FedSpine runs few rounds (10 on the shipped config), so what matters is the reward a device's learner
collects early, not its asymptotic regret. Each trial draws a smooth reward landscape over the shipped
space (ratio in [0, 0.6], rank in [4, 8]): a bump ``0.9 - a * dist^2`` at a random optimum (slow devices
want high ratios, fast ones low), plus Gaussian noise. Both learners play ``--rounds`` rounds; we report
the mean *true* reward of the played points, normalised as ``(mean - worst) / (best - worst)`` over the
allowed points (1 = always the optimum), averaged over ``--trials`` landscapes. The grid learner sees
only its grid arms (the shipped ``[0.0, 0.3, 0.6] x [4, 8]``); S-UCB sees the snapped continuous space.

    python benchmarks/bench_sucb.py                       # 10 rounds, 200 landscapes
    python benchmarks/bench_sucb.py --rounds 30 --noise 0.05 --json /tmp/sucb.json
    python benchmarks/bench_sucb.py --sweep                # the S-UCB parameter sweep of docs/bandit.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np

from fedspine_ray.bandits.sucb import SmoothUCB, allowed_ranks, allowed_ratios
from fedspine_ray.bandits.ucb import DiscountedUCB

RATIOS = allowed_ratios(0.0, 0.6, 0.05)
RANKS = allowed_ranks(4, 8)
GRID = [(p, r) for p in (0.0, 0.3, 0.6) for r in (4, 8)]


def _coords(ratio: float, rank: int) -> tuple[float, float]:
    return ratio / 0.6, math.log2(rank) - 2.0


def _landscape(rng: np.random.Generator):
    opt = (rng.uniform(0, 1), rng.uniform(0, 1))
    curvature = rng.uniform(0.3, 1.2)

    def f(ratio: float, rank: int) -> float:
        u, v = _coords(ratio, rank)
        return 0.9 - curvature * ((u - opt[0]) ** 2 + 0.3 * (v - opt[1]) ** 2)

    values = [f(p, r) for p in RATIOS for r in RANKS]
    return f, max(values), min(values)


def _trial(seed: int, rounds: int, noise: float, sucb_kw: dict) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    f, best, worst = _landscape(rng)
    scale = best - worst if best > worst else 1.0
    out = []
    for learner in ("s_ucb", "grid"):
        noise_rng = np.random.default_rng(seed + 10_000)
        got = []
        if learner == "s_ucb":
            b = SmoothUCB(RATIOS, RANKS, seed=seed, **sucb_kw)
            for _ in range(rounds):
                ratio, rank, cell = b.select()
                b.update(ratio, rank, f(ratio, rank) + noise * noise_rng.standard_normal(), cell)
                got.append(f(ratio, rank))
        else:
            d = DiscountedUCB(len(GRID), gamma=sucb_kw.get("gamma", 0.95), c=sucb_kw.get("c", 0.1), seed=seed)
            for _ in range(rounds):
                arm = d.select()
                d.update(arm, f(*GRID[arm]) + noise * noise_rng.standard_normal())
                got.append(f(*GRID[arm]))
        out.append((float(np.mean(got)) - worst) / scale)
    return out[0], out[1]


def _ci95(values: list[float]) -> float:
    return 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def compare(rounds: int, trials: int, noise: float, sucb_kw: dict) -> dict:
    pairs = [_trial(s, rounds, noise, sucb_kw) for s in range(trials)]
    s_vals, g_vals = [p[0] for p in pairs], [p[1] for p in pairs]
    diffs = [a - b for a, b in pairs]
    return {
        "rounds": rounds,
        "trials": trials,
        "noise": noise,
        "s_ucb": float(np.mean(s_vals)),
        "s_ucb_ci95": _ci95(s_vals),
        "grid_ducb": float(np.mean(g_vals)),
        "grid_ducb_ci95": _ci95(g_vals),
        "diff": float(np.mean(diffs)),
        "diff_ci95": _ci95(diffs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--sweep", action="store_true", help="sweep S-UCB's lipschitz/bandwidth/gamma/c")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    results = []
    if args.sweep:
        grid = itertools.product([0.05, 0.1, 0.2], [0.1, 0.15], [0.95, 0.98], [0.05, 0.1])
        for lip, bw, gamma, c in grid:
            kw = {"lipschitz": lip, "bandwidth": bw, "gamma": gamma, "c": c}
            res = {**kw, **compare(args.rounds, args.trials, args.noise, kw)}
            results.append(res)
            print(f"L={lip} bw={bw} gamma={gamma} c={c}: s_ucb {res['s_ucb']:.3f} ± {res['s_ucb_ci95']:.3f}")
    else:
        res = compare(args.rounds, args.trials, args.noise, {})
        results.append(res)
        print(
            f"{args.trials} smooth landscapes, {args.rounds} rounds, noise {args.noise}; normalised true reward"
        )
        print(f"  s_ucb (continuous, snapped):  {res['s_ucb']:.3f} ± {res['s_ucb_ci95']:.3f}")
        print(f"  discounted_ucb (6-arm grid):  {res['grid_ducb']:.3f} ± {res['grid_ducb_ci95']:.3f}")
        print(f"  paired difference:            {res['diff']:+.3f} ± {res['diff_ci95']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
