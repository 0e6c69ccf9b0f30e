import subprocess
import sys

import pytest

from fedspine_ray.cli import main
from fedspine_ray.config import ConfigError, config_from_dict, load_config


def test_shipped_default_config_is_valid():
    config = load_config()
    assert config.method.name == "fedit"
    assert config.model.path.startswith("package:")
    assert config.training.rounds >= 2


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"training": {"rounds": 0}}, "training.rounds"),
        ({"training": {"lr": "fast"}}, "training.lr"),
        ({"training": {"epochs": 3}}, "training.epochs"),
        ({"clients": {"num_clients": 4, "clients_per_round": 9}}, "clients.clients_per_round"),
        ({"clients": {"resources": [{"num_cpus": -1}]}}, "clients.resources[0].num_cpus"),
        ({"partition": {"kind": "shards"}}, "partition.kind"),
        ({"method": {"name": "fedprox"}}, "method.name"),
        ({"lora": {"rank": 2.5}}, "lora.rank"),
        ({"bogus": 1}, "bogus"),
        ({"rounds": {"end": "deadline"}}, "rounds.deadline_s"),
        ({"bandit": {"fill_budget": True}}, "bandit.fill_budget"),
        ({"devices": {"round_policy": "deadline"}}, "devices.round_policy"),
    ],
)
def test_bad_values_name_the_field(raw, field):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert str(info.value).startswith(field + ":"), str(info.value)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"devices": {"mix": {"jetson_nano": 1, "toaster": 1}}}, "devices.mix"),
        (
            {"devices": {"mix": {"jetson_nano": 1}, "profiles_path": "/nonexistent.yaml"}},
            "devices.profiles_path",
        ),
    ],
)
def test_device_catalogue_is_checked_before_ray(raw, field):
    """Device classes and profile files are inputs (launch/preflight.py), checked before Ray like data files."""
    from fedspine_ray.launch.preflight import check_inputs

    with pytest.raises(ConfigError) as info:
        check_inputs(config_from_dict(raw))
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_numbers_in_yaml_scientific_notation_are_accepted():
    assert config_from_dict({"training": {"lr": "2e-3"}}).training.lr == pytest.approx(0.002)


def test_overrides_apply_and_validate():
    config = load_config(overrides={"training.rounds": 3, "lora.rank": 4})
    assert (config.training.rounds, config.lora.rank) == (3, 4)
    with pytest.raises(ConfigError, match=r"^training\.nope: unknown field"):
        load_config(overrides={"training.nope": 1})


def test_cli_rejects_bad_config_with_exit_2_before_ray(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  local_steps: -4\n")
    ray_was_running = "ray" in sys.modules and __import__("ray").is_initialized()  # another test's session
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.local_steps" in err[0]
    assert ray_was_running or "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_cli_entry_point_exit_code_in_a_fresh_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  max_seq_len: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedspine_ray.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "model.max_seq_len" in proc.stderr
    assert "Ray" not in proc.stderr  # nothing started


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_launcher_side_names_equal_the_registries():
    """Configs are validated without torch from fedspine_ray.config.names; the registries are the truth."""
    from fedspine_ray.config.names import AGGREGATOR_NAMES, IMPORTANCE_NAMES, METHOD_NAMES
    from fedspine_ray.pruning import IMPORTANCE_METHODS
    from fedspine_ray.strategies import STRATEGIES
    from fedspine_ray.strategies.aggregate import AGGREGATORS

    assert sorted(METHOD_NAMES) == sorted(STRATEGIES)
    assert sorted(AGGREGATOR_NAMES) == sorted(AGGREGATORS)
    assert sorted(IMPORTANCE_NAMES) == sorted(IMPORTANCE_METHODS)


def test_loading_and_checking_a_config_imports_no_torch(tmp_path):
    """The launching process validates configs and inputs before Ray starts, in a second, without torch."""
    code = (
        "import sys\n"
        "from fedspine_ray.config import load_config\n"
        "from fedspine_ray.launch.preflight import check_inputs\n"
        "import fedspine_ray.runner\n"
        "check_inputs(load_config(None, {'method.name': 'fedspine', 'pruning.importance': 'taylor'}))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
