"""Stand-ins for the model-hub libraries that APIBench code imports, for the sandbox.

* `runtime`: the import hook and the stand-in objects (what they accept and refuse: see its
  docstring); loaded once by each sandbox worker.
* `hubs`: the model ids each hub knows, read from the vendored Gorilla API databases, and
  `hubs.invent_ids` (swap known ids for invented ones: the measure's negative control).
* `_apis` (generated, do not edit): the real libraries' public modules and names, where each
  came from (``_apis.SOURCES``), transformers' pipeline tasks.
* `generate`: ``python -m rlaif_jax.evaluation.standins.generate`` regenerates `_apis` from the
  installed packages and pinned PyPI distributions (see its docstring).
* `_supplement` (hand-written, with origins): names of library code that is not on PyPI, merged
  into `_apis`' data: fairseq's main branch (``CodeHiFiGANVocoder``, ``VocoderHubInterface``),
  and parrot, vc_models, tuneavideo, which are installed from GitHub.

Libraries served by stand-ins (``_apis.SOURCES`` has the versions): transformers, torch,
torchvision, torchaudio, tensorflow (+ tf.keras), keras, tensorflow_hub, diffusers,
sentence_transformers, huggingface_hub, datasets, PIL, requests, pandas, scipy, sklearn, joblib,
matplotlib, cv2, soundfile, librosa, decord, pydub, IPython, fairseq, speechbrain, pyannote,
flair, asteroid, espnet2/espnet, espnet_model_zoo, timm, ultralyticsplus, yolov5,
controlnet_aux, huggingsound, stable_baselines3, rl_zoo3, huggingface_sb3, gym, skops, optimum,
modelscope, dabl, clip, pytesseract, openai, emoji, germansentiment,
deepmultilingualpunctuation, happytransformer, text2vec, InstructorEmbedding, txtai,
faster_whisper, promptcap, and from GitHub parrot, vc_models, tuneavideo. numpy and the standard
library are real. Any other import fails as "not installed" (the dataset also imports modules
nobody published: audio_models, TF_Decision_Trees, some_module, ...).
"""
