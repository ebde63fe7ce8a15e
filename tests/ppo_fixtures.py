"""Workdir helpers shared by the PPO tests (test_ppo.py, test_sharding_rules.py)."""

import pathlib
import shutil

import jax
import jax.numpy as jnp

from rlaif_jax.checkpoint import StageCheckpoints
from rlaif_jax.models.build import load_model_config, make_lm, make_reward_model
from rlaif_jax.sample_responses import load_stage_params
from rlaif_jax.sharding import make_mesh


def make_reward_checkpoint(workdir: pathlib.Path, config) -> None:
    """A reward checkpoint as `rlaif-jax reward` leaves it: the SFT trunk and a seeded head."""
    cfg = load_model_config(workdir, config.model)
    sft_params, _ = load_stage_params(workdir, "sft", make_lm(cfg), make_mesh(config.mesh),
                                      config.mesh.fsdp_min_size)
    head = make_reward_model(cfg).init(jax.random.PRNGKey(7), jnp.zeros((1, 8), jnp.int32))
    params = {"transformer": sft_params["transformer"],
              "reward_head": head["params"]["reward_head"]}
    ckpts = StageCheckpoints(workdir / "checkpoints" / "reward", keep=1, async_save=False)
    ckpts.save(1, {"params": params}, {"step": 1})
    ckpts.wait()
    ckpts.close()


def copy_run(base: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """The SFT start and reward checkpoint of `base`, copied into `dest` for a fresh PPO run."""
    for part in ("tokenizer", "model", "checkpoints/sft", "checkpoints/reward"):
        shutil.copytree(base / part, dest / part)
    return dest
