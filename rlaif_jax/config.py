"""The configuration schema shared by every config file, and its checks.

Config files in `configs/` start from `base_config()` and change values; they never add keys. The
schema is therefore one place a reader can look up every option. `finalize` locks the config, so a
mistyped key (`--config.sft.lr_rate=...`) fails at flag parsing with the key named, and
`validate` checks values (choices, ranges, divisibility) before any work starts.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
from ml_collections import ConfigDict

DTYPES = ("float32", "bfloat16")
FAMILIES = ("gpt2", "llama")
# HF config.json model_type -> family (rlaif_jax/models/build.py builds the model).
HF_MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama"}


def _source(hub: str, role: str, path: str = "") -> ConfigDict:
    """One data source: a Gorilla apibench file ('' = the vendored one) and what it feeds."""
    return ConfigDict({"hub": hub, "path": path, "role": role})


def base_config() -> ConfigDict:
    """Every key the project knows, with the embedded default's values."""
    c = ConfigDict()
    c.seed = 0
    c.progress = True  # progress bars with ETA on stderr
    c.compilation_cache = "~/.cache/rlaif_jax/xla"  # persistent XLA cache ("" = off)

    c.model = ConfigDict()
    c.model.family = "gpt2"  # "gpt2" or "llama"; ignored with hf_path (its model_type decides)
    c.model.hf_path = ""  # local Hugging Face directory to start from; "" = train from scratch
    c.model.n_positions = 512
    c.model.n_embd = 256
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.n_kv_head = 0  # llama from scratch: key/value heads (0 = n_head)
    c.model.dropout = 0.0
    c.model.dtype = "float32"  # compute dtype
    c.model.param_dtype = "float32"
    c.model.remat = False

    c.tokenizer = ConfigDict()
    c.tokenizer.path = ""  # local HF tokenizer directory; "" = use model.hf_path, else train a BPE
    c.tokenizer.vocab_size = 4096  # for the trained byte-level BPE
    c.tokenizer.min_frequency = 2

    c.data = ConfigDict()
    c.data.sources = [
            _source("huggingface", "split"),
            _source("torchhub", "train"),
            _source("torchhub", "test"),
    ]
    c.data.split_seed = 0
    c.data.validation_fraction = 0.1
    c.data.test_fraction = 0.1
    c.data.on_malformed = "raise"  # or "skip" (skipped lines are counted and logged)
    c.data.max_records_per_source = 0  # 0 = all
    c.data.prompt_template = "###Instruction: {instruction}\n###Output: "
    c.data.sections = ("domain", "api_call", "api_provider", "explanation", "code")
    c.data.max_len = 512  # tokens of prompt + response; longer examples are cut at the end
    c.data.length_bucket = 64  # batches are cut to a multiple of this past their longest row
    c.data.group_by_length = True  # batch examples of similar length (less padding)

    c.sft = ConfigDict()
    c.sft.steps = 1000
    c.sft.batch_size = 32  # global batch, in sequences, per optimizer step
    c.sft.grad_accum = 1  # micro-batches per step (batch_size must divide evenly)
    c.sft.lr = 1e-3
    c.sft.warmup_steps = 50
    c.sft.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio
    c.sft.weight_decay = 0.01
    c.sft.b1 = 0.9
    c.sft.b2 = 0.95
    c.sft.eps = 1e-8
    c.sft.clip_norm = 1.0
    c.sft.eval_every = 200
    c.sft.eval_batch_size = 32
    c.sft.log_every = 10

    c.checkpoint = ConfigDict()
    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 2
    c.checkpoint.async_save = True

    c.mesh = ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1  # tensor-parallel (Megatron) group size; 1 = no tensor axis
    c.mesh.fsdp_min_size = 2**14  # parameters smaller than this stay replicated
    # (regex, spec) pairs over parameter names, tried before the built-in tensor-parallel rules;
    # () = built-in rules + fsdp by size. See rlaif_jax/sharding.py.
    c.mesh.rules = ()
    c.mesh.multihost = "auto"  # jax.distributed.initialize(): "auto" (from the env), "on", "off"

    c.sample = ConfigDict()
    c.sample.split = "train"  # the candidates the judge labels come from the training split
    c.sample.num_samples = 4  # K completions per prompt
    c.sample.max_prompts = 0  # 0 = every prompt of the split, else a seeded random subset
    c.sample.batch_size = 32  # prompts x samples per compiled call
    c.sample.max_prompt_len = 128
    c.sample.max_new_tokens = 384
    # Decode loops the KV cache grows over, here and in the PPO rollout (rlaif_jax/sampling.py):
    # fewer cache slots read per step, but one compiled copy of the decode step per loop;
    # 1 = one loop over a full-width cache.
    c.sample.cache_segments = 4
    c.sample.temperature = 1.0
    c.sample.top_k = 0
    c.sample.top_p = 1.0
    c.sample.greedy = False
    c.sample.checkpoint = "sft"  # which stage's checkpoint to sample from
    c.sample.out = ""  # "" = <workdir>/samples/<split>.jsonl

    c.eval = ConfigDict()
    c.eval.split = "test"
    c.eval.checkpoint = "sft"
    c.eval.greedy = True  # False: sample with config.sample's temperature / top-k / top-p
    c.eval.max_prompts = 0  # 0 = every prompt of the split, else a seeded random subset
    c.eval.metrics = ("ast", "rouge", "codebleu", "exec")
    c.eval.exec_timeout = 10.0  # seconds per sandboxed execution
    c.eval.exec_workers = 0  # parallel executions; 0 = one per core

    # AI feedback (`rlaif-jax label`): a judge answers the rubric's yes/no questions per candidate.
    c.feedback = ConfigDict()
    c.feedback.backend = "reference"  # "reference" (offline, gold-grounded) or "openai"
    c.feedback.rubric = "gorilla8-v1"  # versioned question set (rlaif_jax/feedback/rubric.py)
    c.feedback.include_api_doc = True  # show the gold API record in the judge prompt
    c.feedback.candidates = ""  # "" = <workdir>/samples/<sample.split>.jsonl
    c.feedback.cache = ""  # "" = <workdir>/feedback/cache.sqlite
    c.feedback.threshold = 6  # acceptable when the hard score (yes count) >= this
    c.feedback.pair_min_margin = 1.0  # preference pairs need best - worst score >= this
    c.feedback.exec_timeout = 10.0  # reference judge: seconds per sandboxed run
    c.feedback.dry_run = False  # estimate calls, tokens and cost; call nothing
    # openai backend: any OpenAI-compatible endpoint.
    c.feedback.base_url = "https://api.openai.com/v1"
    c.feedback.model = "gpt-3.5-turbo"
    c.feedback.api_key_env = "OPENAI_API_KEY"  # name of the variable holding the key
    c.feedback.json_mode = True  # ask for a JSON object (response_format); text parsing fallback
    c.feedback.logprobs = True  # request token logprobs for the soft score
    c.feedback.top_logprobs = 5  # alternatives per token (P(yes) sums the yes-like ones)
    c.feedback.temperature = 0.0
    c.feedback.max_tokens = 200
    c.feedback.max_concurrency = 8
    c.feedback.requests_per_minute = 500
    c.feedback.tokens_per_minute = 200_000
    c.feedback.max_retries = 6
    c.feedback.timeout = 60.0  # seconds per request
    c.feedback.backoff_base = 1.0  # seconds; doubled per retry, with jitter, capped below
    c.feedback.backoff_max = 60.0
    c.feedback.batch_api = False  # use the OpenAI Batch API (offline, cheaper, slower)
    c.feedback.batch_poll_seconds = 30.0  # batch_api: seconds between status checks
    # Price table: (model, USD per million input tokens, USD per million output tokens).
    # Cost is reported as unknown for a model not listed here.
    c.feedback.prices = (
            ("gpt-3.5-turbo", 0.5, 1.5),
            ("gpt-4o-mini", 0.15, 0.6),
            ("gpt-4o", 2.5, 10.0),
    )

    # Reward model (`rlaif-jax reward`): the SFT trunk + a scalar head, trained on the AI labels.
    c.reward = ConfigDict()
    c.reward.loss = "pairwise"  # "pairwise" (Bradley-Terry on pairs) or "pointwise" (BCE)
    c.reward.init = "sft"  # trunk initialised from this stage's checkpoint
    c.reward.validation_fraction = 0.1  # held-out prompts for pairwise accuracy / AUC
    c.reward.steps = 200
    c.reward.batch_size = 16  # pairs (pairwise) or candidates (pointwise) per step
    c.reward.lr = 1e-4
    c.reward.warmup_steps = 10
    c.reward.min_lr_ratio = 0.1
    c.reward.weight_decay = 0.0
    c.reward.b1 = 0.9
    c.reward.b2 = 0.95
    c.reward.eps = 1e-8
    c.reward.clip_norm = 1.0
    c.reward.eval_every = 50
    c.reward.log_every = 10

    # PPO (`rlaif-jax ppo`): policy + value head against the reward model, KL to the SFT policy.
    c.ppo = ConfigDict()
    c.ppo.iterations = 20
    c.ppo.prompts_per_iteration = 32  # rollout batch (prompts of the training split)
    c.ppo.max_new_tokens = 256
    # Scoring and the update run on the longest rollout response rounded up to a multiple of
    # this (0: always max_new_tokens). Results are the same; the padding is not computed.
    c.ppo.response_bucket = 64
    c.ppo.temperature = 1.0
    c.ppo.epochs = 2  # passes over each rollout batch
    c.ppo.minibatch_size = 16
    c.ppo.lr = 1e-5
    c.ppo.critic_lr = 5e-5
    c.ppo.clip_norm = 1.0
    c.ppo.critic = "separate"  # "separate" (own trunk, from the RM) or "shared" (head on policy)
    c.ppo.kl_coef = 0.05  # initial beta of the per-token KL penalty
    c.ppo.adaptive_kl = True
    c.ppo.target_kl = 6.0  # adaptive controller: target KL per sequence (nats)
    c.ppo.kl_horizon = 10_000
    c.ppo.early_stop_kl = 0.0  # stop an iteration's epochs when approx KL > this (0 = off)
    c.ppo.gamma = 1.0
    c.ppo.lam = 0.95
    c.ppo.clip_eps = 0.2
    c.ppo.value_clip = 0.2
    c.ppo.vf_coef = 0.5
    c.ppo.ent_coef = 0.0
    c.ppo.whiten_advantages = True
    c.ppo.no_eos_penalty = -1.0  # added to the reward of responses that hit max_new_tokens
    # Reward = rm_weight * RM score + exec_weight * executable + ast_weight * AST match
    #          + exec_ast_weight * (executable AND AST match).
    c.ppo.rm_weight = 1.0
    c.ppo.exec_weight = 0.0
    c.ppo.ast_weight = 0.0
    c.ppo.exec_ast_weight = 0.0
    c.ppo.track_rollout_quality = True  # log rollouts' exec / AST rates even at weight 0
    c.ppo.log_every = 1
    c.ppo.checkpoint_every = 5

    # The whole pipeline (`rlaif-jax run`).
    c.stages = ("sft", "sample", "label", "reward", "ppo", "eval")
    c.num_seeds = 1
    return c


STAGES = ("sft", "sample", "label", "reward", "ppo", "eval")


def stage_list(config: ConfigDict) -> list[str]:
    """The pipeline stages picked by `config.stages` (a tuple, or "a,b" from the command line)."""
    return [part.strip() for item in config.stages for part in str(item).split(",")
            if part.strip()]


def finalize(config: ConfigDict) -> ConfigDict:
    """Locks the config so unknown keys are errors (ml_collections names the key)."""
    config.lock()
    return config


class ConfigError(ValueError):
    """A config value is invalid; the message names the key."""


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}: {msg}")


def validate(config: ConfigDict) -> None:
    """Checks values that types alone do not catch. Raises ConfigError naming the key."""
    m, s, sp, d = config.model, config.sft, config.sample, config.data
    _require(m.family in FAMILIES, "model.family", f"unknown family {m.family!r} (known: {FAMILIES})")
    _require(m.n_kv_head >= 0 and (m.n_kv_head == 0 or m.n_head % m.n_kv_head == 0),
             "model.n_kv_head", "must be 0 or divide model.n_head")
    for key in ("dtype", "param_dtype"):
        _require(m[key] in DTYPES, f"model.{key}", f"{m[key]!r} is not one of {DTYPES}")
    _require(m.n_embd % m.n_head == 0, "model.n_embd", "must be divisible by model.n_head")
    _require(not m.hf_path or (pathlib.Path(m.hf_path) / "config.json").is_file(),
             "model.hf_path", f"{m.hf_path!r} is not a Hugging Face model directory "
             "(no config.json there)")
    if m.hf_path and (pathlib.Path(m.hf_path) / "config.json").is_file():
        model_type = _hf_model_type(pathlib.Path(m.hf_path) / "config.json")
        _require(model_type is None or model_type in HF_MODEL_TYPES, "model.hf_path",
                 f"{m.hf_path}/config.json has model_type {model_type!r} (supported: "
                 f"{', '.join(HF_MODEL_TYPES)})")
    _require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    _require(d.on_malformed in ("raise", "skip"), "data.on_malformed", "must be 'raise' or 'skip'")
    _require(d.max_len <= m.n_positions, "data.max_len", "must not exceed model.n_positions")
    _require(
            0 <= d.validation_fraction < 1 and 0 <= d.test_fraction < 1
            and d.validation_fraction + d.test_fraction < 1,
            "data.validation_fraction", "fractions must be in [0, 1) and sum below 1")
    for i, src in enumerate(d.sources):
        _require(src.role in ("split", "train", "test"), f"data.sources[{i}].role",
             f"{src.role!r} is not one of split/train/test")
    _require(s.steps > 0, "sft.steps", "must be positive")
    _require(s.grad_accum >= 1 and s.batch_size % s.grad_accum == 0, "sft.grad_accum",
           f"sft.batch_size={s.batch_size} must be divisible by sft.grad_accum={s.grad_accum}")
    _require(s.lr > 0, "sft.lr", "must be positive")
    _require(0 <= s.warmup_steps < s.steps, "sft.warmup_steps", "must be in [0, sft.steps)")
    _require(config.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be positive")
    _require(config.checkpoint.keep >= 1, "checkpoint.keep", "must be at least 1")
    _require(sp.split in ("train", "validation", "test"), "sample.split",
           "must be train, validation or test")
    _require(sp.num_samples >= 1, "sample.num_samples", "must be at least 1")
    _require(sp.cache_segments >= 1, "sample.cache_segments", "must be at least 1")
    _require(sp.temperature > 0 or sp.greedy, "sample.temperature", "must be positive")
    _require(0 < sp.top_p <= 1, "sample.top_p", "must be in (0, 1]")
    _require(sp.max_prompt_len + sp.max_new_tokens <= m.n_positions, "sample.max_new_tokens",
           "sample.max_prompt_len + sample.max_new_tokens must not exceed model.n_positions")
    _require(sp.checkpoint in ("sft", "ppo"), "sample.checkpoint", "must be 'sft' or 'ppo'")
    e = config.eval
    _require(e.split in ("train", "validation", "test"), "eval.split",
             "must be train, validation or test")
    _require(e.checkpoint in ("sft", "ppo"), "eval.checkpoint", "must be 'sft' or 'ppo'")
    bad = set(e.metrics) - {"ast", "rouge", "codebleu", "exec"}
    _require(not bad, "eval.metrics", f"unknown {sorted(bad)} (known: ast, rouge, codebleu, exec)")
    _require(e.exec_timeout > 0, "eval.exec_timeout", "must be positive")
    _validate_feedback(config.feedback)
    bad = [st for st in stage_list(config) if st not in STAGES]
    _require(not bad, "stages", f"unknown {bad} (stages: {', '.join(STAGES)})")
    _require(config.num_seeds >= 1, "num_seeds", "must be at least 1")
    _validate_reward(config.reward)
    _validate_ppo(config)
    _validate_mesh(config)


def _validate_mesh(config: ConfigDict) -> None:
    from rlaif_jax.sharding import check_mesh_config  # its messages name the mesh key

    try:
        check_mesh_config(config.mesh, config.model)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def _hf_model_type(path: pathlib.Path):
    """The `model_type` of a HF config.json (None when absent or unreadable: building the model
    reports that with the file named)."""
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _validate_feedback(f: ConfigDict) -> None:
    from rlaif_jax.feedback.rubric import RUBRICS

    _require(f.backend in ("reference", "openai"), "feedback.backend",
             f"{f.backend!r} is not one of 'reference', 'openai'")
    _require(f.rubric in RUBRICS, "feedback.rubric",
             f"unknown rubric {f.rubric!r} (known: {', '.join(sorted(RUBRICS))})")
    n_questions = len(RUBRICS[f.rubric].questions) if f.rubric in RUBRICS else 0
    _require(0 <= f.threshold <= n_questions, "feedback.threshold",
             f"must be between 0 and the rubric's {n_questions} questions")
    _require(f.pair_min_margin > 0, "feedback.pair_min_margin", "must be positive (ties are "
             "never pairs)")
    _require(f.exec_timeout > 0, "feedback.exec_timeout", "must be positive")
    # openai backend
    _require(f.max_concurrency >= 1, "feedback.max_concurrency", "must be at least 1")
    for key in ("requests_per_minute", "tokens_per_minute", "max_retries", "temperature",
                "backoff_base"):
        _require(f[key] >= 0, f"feedback.{key}", "must be >= 0 (0 = no limit for the rates)")
    _require(f.backoff_max >= f.backoff_base, "feedback.backoff_max",
             "must be >= feedback.backoff_base")
    _require(f.timeout > 0, "feedback.timeout", "must be positive")
    _require(f.max_tokens >= 1, "feedback.max_tokens", "must be at least 1")
    _require(0 <= f.top_logprobs <= 20, "feedback.top_logprobs", "must be in [0, 20]")
    _require(f.batch_poll_seconds > 0, "feedback.batch_poll_seconds", "must be positive")
    _require(bool(f.api_key_env), "feedback.api_key_env", "must name an environment variable")


def _validate_ppo(config: ConfigDict) -> None:
    p = config.ppo
    _require(p.iterations > 0, "ppo.iterations", "must be positive")
    _require(p.prompts_per_iteration >= 1, "ppo.prompts_per_iteration", "must be at least 1")
    _require(p.minibatch_size >= 1 and p.prompts_per_iteration % p.minibatch_size == 0,
             "ppo.minibatch_size", f"ppo.prompts_per_iteration={p.prompts_per_iteration} must "
             f"be divisible by ppo.minibatch_size={p.minibatch_size}")
    _require(p.epochs >= 1, "ppo.epochs", "must be at least 1")
    _require(p.max_new_tokens >= 1, "ppo.max_new_tokens", "must be at least 1")
    _require(config.sample.max_prompt_len + p.max_new_tokens <= config.model.n_positions,
             "ppo.max_new_tokens",
             "sample.max_prompt_len + ppo.max_new_tokens must not exceed model.n_positions")
    _require(p.temperature > 0, "ppo.temperature", "must be positive")
    _require(p.response_bucket >= 0, "ppo.response_bucket", "must be >= 0 (0 turns trimming off)")
    _require(p.lr > 0 and p.critic_lr > 0, "ppo.lr", "ppo.lr and ppo.critic_lr must be positive")
    _require(p.clip_norm > 0, "ppo.clip_norm", "must be positive")
    _require(p.critic in ("separate", "shared"), "ppo.critic",
             f"{p.critic!r} is not one of 'separate', 'shared'")
    _require(p.kl_coef >= 0, "ppo.kl_coef", "must be >= 0")
    _require(not p.adaptive_kl or p.target_kl > 0, "ppo.target_kl",
             "must be positive with ppo.adaptive_kl")
    _require(p.kl_horizon > 0, "ppo.kl_horizon", "must be positive")
    _require(p.early_stop_kl >= 0, "ppo.early_stop_kl", "must be >= 0 (0 = off)")
    _require(0 < p.gamma <= 1, "ppo.gamma", "must be in (0, 1]")
    _require(0 <= p.lam <= 1, "ppo.lam", "must be in [0, 1]")
    _require(p.clip_eps > 0, "ppo.clip_eps", "must be positive")
    _require(p.value_clip >= 0, "ppo.value_clip", "must be >= 0 (0 = no value clipping)")
    _require(p.log_every >= 1, "ppo.log_every", "must be at least 1")
    _require(p.checkpoint_every >= 1, "ppo.checkpoint_every", "must be at least 1")


def _validate_reward(r: ConfigDict) -> None:
    _require(r.loss in ("pairwise", "pointwise"), "reward.loss",
             f"{r.loss!r} is not one of 'pairwise', 'pointwise'")
    _require(r.init in ("sft", "ppo"), "reward.init", f"{r.init!r} is not one of 'sft', 'ppo'")
    _require(0 <= r.validation_fraction < 1, "reward.validation_fraction", "must be in [0, 1)")
    _require(r.steps > 0, "reward.steps", "must be positive")
    _require(r.batch_size >= 1, "reward.batch_size", "must be at least 1")
    _require(r.lr > 0, "reward.lr", "must be positive")
    _require(0 <= r.warmup_steps < r.steps, "reward.warmup_steps", "must be in [0, reward.steps)")
    _require(r.eval_every > 0, "reward.eval_every", "must be positive")
    _require(r.log_every > 0, "reward.log_every", "must be positive")

def save_resolved(config: ConfigDict, workdir: pathlib.Path, command: str) -> pathlib.Path:
    """Writes the resolved config of this command to `workdir/config.<command>.json`."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"config.{command}.json"
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list) + "\n")
    return path


def from_json(text: str) -> ConfigDict:
    """Reads a config written by `save_resolved` (for tools that start from a workdir)."""
    return ml_collections.ConfigDict(json.loads(text))


def load_config_file(spec: str) -> ConfigDict:
    """Loads `path.py[:arg]` the way the --config flag does (for checks made before flag parsing)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_rlaif_config", path)
    if module_spec is None or not pathlib.Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _has_key(config: ConfigDict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def unknown_override_keys(argv: list[str]) -> list[str]:
    """Keys of `--config.KEY=VALUE` arguments that the selected config file does not define."""
    spec, overrides = None, []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in ("--config", "-config"):
            spec = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        elif name.startswith("--config.") and "[" not in name:
            overrides.append(name[len("--config."):])
    if spec is None or not overrides:
        return []
    config = load_config_file(spec)
    return [key for key in overrides if not _has_key(config, key)]
