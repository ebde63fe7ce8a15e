"""Configs load and validate; bad keys, types and values fail before any work, naming the key."""

import pytest

from conftest import cli, load_config
from rlaif_jax.config import ConfigError, unknown_override_keys, validate


@pytest.mark.parametrize("name,arg", [("tiny", None), ("smoke", None), ("smoke", "mesh8")])
def test_shipped_configs_validate(name, arg):
    validate(load_config(name, arg))


def test_gpt2_large_needs_a_real_hf_directory(tmp_path):
    config = load_config("gpt2_large", str(tmp_path))
    with pytest.raises(ConfigError, match="config.model.hf_path"):
        validate(config)
    (tmp_path / "config.json").write_text("{}")
    validate(config)


@pytest.mark.parametrize("key,value,msg", [
    ("sft.grad_accum", 3, "config.sft.grad_accum"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("sample.top_p", 0.0, "config.sample.top_p"),
    ("sample.cache_segments", 0, "config.sample.cache_segments"),
    ("data.max_len", 4096, "config.data.max_len"),
])
def test_bad_values_name_the_key(key, value, msg):
    config = load_config("smoke")
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ConfigError, match=msg):
        validate(config)


def test_unknown_override_keys_are_found():
    argv = ["sft", "--config=configs/smoke.py", "--config.sft.lr_rate=1", "--config.sft.lr=1",
            "--config.nope.x", "2"]
    assert unknown_override_keys(argv) == ["sft.lr_rate", "nope.x"]


@pytest.mark.parametrize("override,msg", [
    ("--config.sft.lr_rate=0.1", "config.sft.lr_rate"),
    ("--config.sft.steps=abc", "config.sft.steps"),
    ("--config.sft.steps=1.5", "config.sft.steps"),
    ("--config.sft.grad_accum=3", "config.sft.grad_accum"),
])
def test_cli_rejects_bad_config_before_work(tmp_path, override, msg):
    workdir = tmp_path / "w"
    proc = cli("sft", "--config=configs/smoke.py", override, "--workdir", workdir, check=False)
    assert proc.returncode != 0
    assert msg in proc.stderr + proc.stdout
    assert not workdir.exists()


def test_cli_unknown_command(tmp_path):
    proc = cli("fly", "--config=configs/smoke.py", "--workdir", tmp_path, check=False)
    assert proc.returncode != 0
    assert "sft" in proc.stderr and "sample" in proc.stderr
