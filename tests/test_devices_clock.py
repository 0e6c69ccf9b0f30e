"""Device profiles, assignment, per-round conditions, simulated clock and memory model."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from fedspine_ray.devices import (
    DeviceConditions,
    DeviceProfile,
    SlowdownEvent,
    assign_devices,
    conditions_at,
    load_device_profiles,
)
from fedspine_ray.devices.cost import (
    RoundTime,
    estimate_training_flops,
    estimate_training_memory,
    fits_in_memory,
    forward_flops_per_token,
    round_end_time,
    simulated_round_time,
)


def test_shipped_profiles_load():
    p = load_device_profiles()
    assert {"jetson_nano", "jetson_tx2", "xavier_nx", "agx_orin", "phone_midrange", "phone_flagship"} <= set(
        p
    )
    assert (
        p["agx_orin"].flops_per_s
        > p["xavier_nx"].flops_per_s
        > p["jetson_tx2"].flops_per_s
        > p["jetson_nano"].flops_per_s
    )
    opts = p["jetson_nano"].ray_actor_options()
    assert opts["resources"] == {"fedspine_jetson_nano": 0.01} and opts["num_cpus"] <= 0.5


@pytest.mark.parametrize("field", ["flops_per_s", "memory_bytes", "uplink_bps", "downlink_bps"])
def test_bad_value_names_field(field):
    kw = dict(name="x", flops_per_s=1.0, memory_bytes=1.0, uplink_bps=1.0, downlink_bps=1.0)
    kw[field] = -3
    with pytest.raises(ValueError, match=field):
        DeviceProfile(**kw)


def test_bad_fluctuation_and_names():
    with pytest.raises(ValueError, match="fluctuation"):
        DeviceProfile("x", 1, 1, 1, 1, fluctuation=-0.1)
    with pytest.raises(ValueError, match="name"):
        DeviceProfile("bad name!", 1, 1, 1, 1)
    with pytest.raises(ValueError, match="ray_resource"):
        DeviceProfile("x", 1, 1, 1, 1, ray_resource="node:1.2.3.4")


def test_user_yaml_extends_and_overrides(tmp_path):
    f = tmp_path / "devs.yaml"
    f.write_text(
        "jetson_nano:\n  fluctuation: 0.5\n"
        "my_board:\n  flops_per_s: 5e10\n  memory_bytes: 2.5e8\n  uplink_bps: 1e6\n  downlink_bps: 2e6\n"
        "  drift: [[10, 0.25]]\n"
        "phone_flagship: null\n"
    )
    p = load_device_profiles(str(f))
    shipped = load_device_profiles()
    assert p["jetson_nano"].fluctuation == 0.5
    assert p["jetson_nano"].flops_per_s == shipped["jetson_nano"].flops_per_s
    assert p["my_board"].memory_bytes == 2.5e8 and p["my_board"].ray_resource == "fedspine_my_board"
    assert p["my_board"].speed_multiplier(9) == 1.0 and p["my_board"].speed_multiplier(10) == 0.25
    assert "phone_flagship" not in p
    bad = tmp_path / "bad.yaml"
    bad.write_text("jetson_nano:\n  uplink_bps: 0\n")
    with pytest.raises(ValueError, match="uplink_bps"):
        load_device_profiles(str(bad))


def test_assign_devices_proportions_and_determinism():
    mix = {"jetson_nano": 0.5, "agx_orin": 0.3, "phone_midrange": 0.2}
    a = assign_devices(mix, 10, seed=1)
    assert Counter(a) == {"jetson_nano": 5, "agx_orin": 3, "phone_midrange": 2}
    assert a == assign_devices(mix, 10, seed=1)
    assert a != assign_devices(mix, 10, seed=2) or len(set(a)) == 1
    b = assign_devices({"x": 1, "y": 1, "z": 1}, 7, seed=0)
    assert len(b) == 7 and sorted(Counter(b).values()) == [2, 2, 3]
    with pytest.raises(ValueError, match="unknown class"):
        assign_devices({"nope": 1}, 3, 0, known=load_device_profiles())


def test_conditions_deterministic_and_fluctuating():
    p = load_device_profiles()["jetson_nano"]
    c1 = conditions_at(p, client_id=3, round=5, seed=42)
    assert c1 == conditions_at(p, client_id=3, round=5, seed=42)
    assert c1 != conditions_at(p, client_id=3, round=5, seed=43)
    flops = [conditions_at(p, 3, r, 42).flops_per_s for r in range(300)]
    assert len(set(flops)) == 300
    mean = sum(flops) / len(flops)
    std = math.sqrt(sum((f - mean) ** 2 for f in flops) / len(flops))
    assert mean == pytest.approx(p.flops_per_s, rel=0.05)
    assert std / mean == pytest.approx(p.fluctuation, rel=0.3)
    mems = [conditions_at(p, 3, r, 42).memory_bytes for r in range(50)]
    assert all(0.5 * p.memory_bytes <= m <= p.memory_bytes for m in mems)
    still = DeviceProfile("still", 10.0, 1.0, 1.0, 1.0, fluctuation=0.0, drift=0.5)
    assert conditions_at(still, 0, 3, 0).flops_per_s == pytest.approx(10.0 * 0.125)


def test_slowdown_event_hook():
    p = DeviceProfile("x", 100.0, 1.0, 8.0, 8.0)
    slow = [SlowdownEvent(client_id=2, from_round=10, multiplier=0.25)]
    assert conditions_at(p, 2, 9, 0, slow).flops_per_s == 100.0
    assert conditions_at(p, 2, 10, 0, slow).flops_per_s == 25.0
    assert conditions_at(p, 2, 10, 0, slow).uplink_bps == 8.0  # network untouched by default
    ev = SlowdownEvent(client_id=1, from_round=0, multiplier=0.5, until_round=3, network=True)
    assert conditions_at(p, 1, 2, 0, [ev]).uplink_bps == 4.0
    assert conditions_at(p, 1, 3, 0, [ev]).uplink_bps == 8.0
    assert conditions_at(p, 0, 2, 0, [ev]).uplink_bps == 8.0


def test_clock_arithmetic():
    assert forward_flops_per_token(1000, num_layers=2, seq_len=10, attention_width=4) == 2000 + 160
    assert estimate_training_flops(100.0, 50) == 2 * 100 * 50
    assert estimate_training_flops(100.0, 50, multiplier=3.0) == 15000
    cond = DeviceConditions(flops_per_s=1e9, uplink_bps=8e6, downlink_bps=16e6, memory_bytes=1e9)
    rt = simulated_round_time(train_flops=5e9, bytes_down=4e6, bytes_up=2e6, conditions=cond)
    assert rt == RoundTime(compute_s=5.0, download_s=2.0, upload_s=2.0, total_s=9.0)


def test_round_end_time_policies():
    times = {0: 3.0, 1: 10.0, 2: 5.0, 3: math.inf}
    o = round_end_time(times, "wait_all")
    assert o.end_time == 10.0 and o.participants == [0, 1, 2] and o.failed == [3] and o.idle_s[0] == 7.0
    o = round_end_time(times, "deadline", deadline_s=6.0)
    assert o.end_time == 6.0 and o.participants == [0, 2] and o.stragglers == [1]
    o = round_end_time(times, "deadline", deadline_s=6.0, drop_stragglers=False)
    assert o.participants == [0, 2, 1] and o.end_time == 6.0
    assert round_end_time([1.0, 2.0], "deadline", deadline_s=6.0).end_time == 2.0
    with pytest.raises(ValueError, match="deadline_s"):
        round_end_time(times, "deadline")


def test_memory_model_hand_computed_and_fit():
    m = estimate_training_memory(
        100, 10, batch_size=2, seq_len=3, hidden_size=4, num_layers=1, intermediate_size=5, num_heads=1
    )
    # weights 400 + grads 40 + adam 80 + acts 2*3*1*(32 + 10 + 6)*4 = 1152
    assert m == 400 + 40 + 80 + 1152


def test_memory_constraint_binds_for_minilm_on_weakest_class():
    """MiniLM-L6 (22.7M params, h=384, i=1536, 12 heads, 6 layers): the unpruned model must not fit
    the Jetson Nano class while a 50 %-pruned one (FFN and heads halved) does."""
    nano = load_device_profiles()["jetson_nano"]
    cond = DeviceConditions(nano.flops_per_s, nano.uplink_bps, nano.downlink_bps, nano.memory_bytes)

    def need(ratio: float) -> int:
        i, heads = int(1536 * (1 - ratio)), max(1, round(12 * (1 - ratio)))
        params = 22_700_000 - 6 * ((1536 - i) * 2 * 384 + (12 - heads) * 64 * 4 * 384)
        return estimate_training_memory(params, 150_000, 16, 128, 384, 6, i, num_heads=heads)

    assert not fits_in_memory(need(0.0), cond)
    assert fits_in_memory(need(0.5), cond)
