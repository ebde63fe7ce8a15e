"""`rlaif-jax COMMAND --config=configs/NAME.py[:arg] [--config.a.b=value ...] --workdir DIR`.

Every command reads the same ml-collections config. Unknown keys and values of the wrong type are
rejected by the config flag while flags are parsed; `rlaif_jax.config.validate` then checks values.
Both happen before any work starts. The resolved config is written to `DIR/config.COMMAND.json`
and the log to `DIR/logs/COMMAND.log`.
"""

from __future__ import annotations

import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/tiny.py (or configs/tiny.py:ARG).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's outputs.")


def _sft(config, workdir):
    from rlaif_jax.train import sft
    summary = sft.train(config, workdir)
    print(f"SFT done: val_loss {summary['val_loss']:.4f} "
          f"(unigram baseline {summary['unigram_val_loss']:.4f}), {summary['wall_time_s']} s")


def _sample(config, workdir):
    from rlaif_jax import sample_responses
    summary = sample_responses.run(config, workdir)
    print(f"Wrote {summary['samples']} samples to {summary['out']}: "
          f"{summary['well_formed_fraction']:.1%} well-formed, "
          f"{summary['finished_fraction']:.1%} ended with EOS, {summary['wall_time_s']} s")


COMMANDS = {
    "sft": (_sft, "supervised fine-tuning on the training split"),
    "sample": (_sample, "K completions per prompt of a split, as Gorilla-format JSONL"),
}


def _usage() -> str:
    lines = [f"  {name:8s} {doc}" for name, (_, doc) in COMMANDS.items()]
    return ("usage: rlaif-jax COMMAND --config=configs/NAME.py [--config.KEY=VALUE ...] "
            "--workdir DIR\ncommands:\n" + "\n".join(lines))


def _main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        sys.exit(f"rlaif-jax: unknown command or extra arguments: {' '.join(argv[1:])!r}\n"
                 + _usage())
    if _CONFIG.value is None:
        sys.exit("rlaif-jax: --config is required, e.g. --config=configs/tiny.py")
    if not _WORKDIR.value:
        sys.exit("rlaif-jax: --workdir is required")
    from rlaif_jax.config import ConfigError, save_resolved, validate

    command, config = argv[1], _CONFIG.value
    try:
        validate(config)
    except ConfigError as e:
        sys.exit(f"rlaif-jax: {e}")
    workdir = pathlib.Path(_WORKDIR.value)
    save_resolved(config, workdir, command)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(workdir / "logs" / f"{command}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax/jax chatter via absl.logging
    if config.compilation_cache:
        import jax
        jax.config.update("jax_compilation_cache_dir",
                          str(pathlib.Path(config.compilation_cache).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    COMMANDS[command][0](config, workdir)


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return
    from rlaif_jax.config import ConfigError, unknown_override_keys

    try:
        unknown = unknown_override_keys(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"rlaif-jax: {e}")
    if unknown:
        sys.exit("rlaif-jax: unknown config key(s): "
                 + ", ".join(f"config.{k}" for k in unknown)
                 + " (see rlaif_jax/config.py for every key)")
    app.run(_main)


if __name__ == "__main__":
    main()
