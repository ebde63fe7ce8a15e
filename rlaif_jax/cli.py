"""`rlaif-jax COMMAND --config=configs/NAME.py[:arg] [--config.a.b=value ...] --workdir DIR`.

Every stage command reads the same ml-collections config. Unknown keys and values of the wrong
type are rejected before flag parsing ends; `rlaif_jax.config.validate` then checks values. Both
happen before any work starts. The resolved config is written to `DIR/config.COMMAND.json` and
the log to `DIR/logs/COMMAND.log`. In a multi-host run process 0 writes the config and that
log, and each other process logs to `DIR/logs/COMMAND.process<N>.log`.

`rlaif-jax eval-responses` scores any Gorilla-format responses file and takes no config;
`rlaif-jax import --hf DIR --workdir W` and `rlaif-jax export --workdir W --stage S --out DIR`
convert between Hugging Face directories and a workdir's checkpoints, also without a config.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/tiny.py (or configs/tiny.py:ARG).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's outputs.")
# eval-responses
_PROVIDER = flags.DEFINE_enum("provider", None, ["huggingface", "torchhub", "tensorflowhub"],
                              "eval-responses: the API provider of the responses.")
_RESPONSES = flags.DEFINE_string("responses", None, "eval-responses: responses JSONL file.")
_APIBENCH = flags.DEFINE_string("apibench", None,
                                "eval-responses: apibench file (default: the vendored one).")
_API_DB = flags.DEFINE_string("api_db", None,
                              "eval-responses: API database (default: the vendored one).")
_METRICS = flags.DEFINE_list("metrics", ["ast", "rouge", "codebleu", "exec"],
                             "eval-responses: measures to compute.")
_OUT = flags.DEFINE_string("out", None, "eval-responses: write the JSON report here; "
                           "export: the Hugging Face directory to write.")
# import / export
_HF = flags.DEFINE_string("hf", None, "import: a local Hugging Face causal-LM directory.")
_STAGE = flags.DEFINE_enum("stage", None, ["sft", "ppo", "reward"], "export: the stage to export.")
_PUSH_TO_HUB = flags.DEFINE_string("push_to_hub", None,
                                   "export: also upload to this Hub repo id (needs network).")
_EXEC_TIMEOUT = flags.DEFINE_float("exec_timeout", 10.0, "eval-responses: seconds per execution.")
_AST_RULE = flags.DEFINE_enum(
    "ast_rule", None, ["huggingface", "torchhub", "tensorflowhub"],
    "eval-responses: score compat AST match with this provider's Gorilla script rules (default: "
    "the provider's own; 'huggingface' for TorchHub reproduces the paper's TorchHub numbers).")
_WORKERS = flags.DEFINE_integer("workers", None, "eval-responses: parallel executions "
                                "(default: one per core).")


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


def _eval(config, workdir):
    from rlaif_jax.evaluation import run_eval
    report = run_eval.run(config, workdir)
    print(f"Wrote {report['out']}")


def _label(config, workdir):
    from rlaif_jax.data.jsonl import MalformedRecordError
    from rlaif_jax.feedback import label
    from rlaif_jax.feedback.openai_judge import JudgeError
    try:
        summary = label.run(config, workdir)
    except (JudgeError, MalformedRecordError, FileNotFoundError) as e:  # anything else: a bug
        logging.error("label failed: %s", e)
        sys.exit(f"rlaif-jax label: {e}\n(answers received so far are cached; rerun to resume)")
    from rlaif_jax import distributed
    if distributed.is_writer():
        label.print_summary(summary)


def _reward(config, workdir):
    from rlaif_jax.train import reward
    summary = reward.train(config, workdir)
    print(f"Reward model done: held-out pairwise accuracy "
          f"{summary.get('val_pairwise_accuracy', float('nan')):.3f}, "
          f"AUC {summary.get('val_auc', float('nan')):.3f}, {summary['wall_time_s']} s")


def _ppo(config, workdir):
    from rlaif_jax.train import ppo
    summary = ppo.train(config, workdir)
    print(f"PPO done: {summary['iterations']} iterations, final mean reward "
          f"{summary.get('final_reward', float('nan')):.3f}, {summary['wall_time_s']} s")


def _run(config, workdir):
    from rlaif_jax import pipeline
    data = pipeline.run(config, workdir)
    print(f"Wrote {workdir / 'report.md'} and {workdir / 'report.json'} "
          f"(total {data.get('total_seconds')} s)")


def _eval_responses(_config, _workdir):
    from rlaif_jax.evaluation import evaluator

    if not _PROVIDER.value or not _RESPONSES.value:
        sys.exit("rlaif-jax eval-responses: --provider and --responses are required")
    try:
        report = evaluator.evaluate(
            _PROVIDER.value, _RESPONSES.value, apibench=_APIBENCH.value, api_db=_API_DB.value,
            metrics=_METRICS.value, exec_timeout=_EXEC_TIMEOUT.value, workers=_WORKERS.value,
            ast_rule=_AST_RULE.value,
            progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"rlaif-jax eval-responses: {e}")
    evaluator.print_report(report)
    if _OUT.value:
        out = pathlib.Path(_OUT.value)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"Wrote {out}")


def _import_cmd(_config, _workdir):
    from rlaif_jax import import_stage

    if not _HF.value or not _WORKDIR.value:
        sys.exit("rlaif-jax import: --hf DIR and --workdir W are required")
    try:
        summary = import_stage.run(_HF.value, _WORKDIR.value)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        sys.exit(f"rlaif-jax import: {e}")
    print(f"Imported {summary['model_type']} ({summary['params']:,} parameters) from "
          f"{summary['from']} as the sft checkpoint of {_WORKDIR.value}")


def _export(_config, _workdir):
    from rlaif_jax import export_stage

    if not (_WORKDIR.value and _STAGE.value and _OUT.value):
        sys.exit("rlaif-jax export: --workdir W, --stage {sft,ppo,reward} and --out DIR are required")
    try:
        summary = export_stage.run(_WORKDIR.value, _STAGE.value, _OUT.value, _PUSH_TO_HUB.value)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        sys.exit(f"rlaif-jax export: {e}")
    print(f"Exported the {summary['exported_stage']} checkpoint (step {summary['checkpoint_step']}) "
          f"to {summary['out']}" + (f" and {summary['hub_url']}" if "hub_url" in summary else ""))


# name: (function, needs --config/--workdir, help)
COMMANDS = {
    "sft": (_sft, True, "supervised fine-tuning on the training split"),
    "sample": (_sample, True, "K completions per prompt of a split, as Gorilla-format JSONL"),
    "run": (_run, True, "the whole pipeline (config.stages), skipping finished stages; "
                        "writes report.md/json"),
    "label": (_label, True, "AI feedback: judge the sampled candidates, write labels and pairs"),
    "reward": (_reward, True, "train the reward model on the AI labels"),
    "ppo": (_ppo, True, "PPO against the reward model, KL to the SFT policy"),
    "eval": (_eval, True, "sample the test split from a checkpoint (eval.checkpoint) and score it"),
    "eval-responses": (_eval_responses, False,
                       "score a responses file: --provider P --responses F [--out report.json]"),
    "import": (_import_cmd, False, "a Hugging Face causal LM as the sft checkpoint: --hf DIR "
                                   "--workdir W"),
    "export": (_export, False, "a stage's checkpoint as a Hugging Face directory: --workdir W "
                               "--stage {sft,ppo,reward} --out DIR [--push_to_hub REPO]"),
}


def _usage() -> str:
    lines = [f"  {name:15s} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    return ("usage: rlaif-jax COMMAND --config=configs/NAME.py [--config.KEY=VALUE ...] "
            "--workdir DIR\ncommands:\n" + "\n".join(lines))


def _setup_run(command: str, config) -> pathlib.Path:
    """Validates the config, writes it and the log into the workdir, sets up the XLA cache."""
    from rlaif_jax.config import ConfigError, save_resolved, validate

    if config is None:
        sys.exit("rlaif-jax: --config is required, e.g. --config=configs/tiny.py")
    if not _WORKDIR.value:
        sys.exit("rlaif-jax: --workdir is required")
    try:
        validate(config)
    except ConfigError as e:
        sys.exit(f"rlaif-jax: {e}")
    from rlaif_jax import distributed
    distributed.maybe_initialize(config.mesh.multihost)  # multi-host: before any JAX computation
    workdir = pathlib.Path(_WORKDIR.value)
    log_name = f"{command}.log"
    if distributed.is_writer():
        save_resolved(config, workdir, command)
    else:
        import jax
        log_name = f"{command}.process{jax.process_index()}.log"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(workdir / "logs" / log_name)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    if config.compilation_cache:
        import jax
        jax.config.update("jax_compilation_cache_dir",
                          str(pathlib.Path(config.compilation_cache).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return workdir


def _main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        sys.exit(f"rlaif-jax: unknown command or extra arguments: {' '.join(argv[1:])!r}\n"
                 + _usage())
    command = argv[1]
    fn, needs_config, _ = COMMANDS[command]
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax/jax chatter via absl.logging
    for name in ("httpx", "httpx2", "httpcore", "openai"):  # a line per HTTP request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    if needs_config:
        config = _CONFIG.value
        fn(config, _setup_run(command, config))
    else:
        fn(None, None)


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
