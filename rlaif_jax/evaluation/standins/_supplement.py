"""Public names of library code that is not on PyPI, added to the generated `_apis` data.

Some APIBench code follows libraries that are installed from their GitHub repositories rather than
from PyPI, so `generate.py` (which reads PyPI distributions) cannot see them. Their names were read
by hand from the repositories' sources (the module-level names: ``def``/``class``/assignments/
imports, and what ``from x import *`` brings in) and are merged into the stand-in data by
`runtime.load`. A module listed in `OPEN` exists but its names were not read: any attribute is
accepted there, as for the deep modules of `_apis`.

* **fairseq, main branch** (facebookresearch/fairseq; the last PyPI release, 0.12.2 of June 2022,
  predates the unit vocoders). Hugging Face model cards of the ``facebook/unit_hifigan_*`` and
  ``facebook/xm_transformer_*`` models import ``CodeHiFiGANVocoder`` from
  ``fairseq.models.text_to_speech`` and ``VocoderHubInterface`` from its ``hub_interface``; on main
  ``text_to_speech/__init__.py`` (commit 7e2a8eab) star-imports ``vocoder.py`` (commit 09a43a81,
  which defines ``CodeHiFiGANVocoder``), and ``hub_interface.py`` defines
  ``VocoderHubInterface``. The names below are those of main; 0.12.2's stay in `_apis`.
* **parrot** (PrithivirajDamodaran/Parrot_Paraphraser, ``pip install git+...``):
  ``parrot/__init__.py`` (commit a58c87c3) imports ``Parrot`` from ``parrot/parrot.py``.
* **vc_models** (facebookresearch/eai-vc, directory ``vc_models/src``, commit 17a27aea): the
  package, ``models/__init__.py`` and ``models/vit/model_utils.py``.
* **tuneavideo** (showlab/Tune-A-Video, commit 3c5583c0 for the pipeline, f0c5d9b7 for
  ``util.py``).
"""

SOURCES = {
    "fairseq": ["GitHub facebookresearch/fairseq main (text_to_speech __init__ 7e2a8eab, "
                "vocoder.py 09a43a81, hub_interface.py with VocoderHubInterface), read by hand"],
    "parrot": ["GitHub PrithivirajDamodaran/Parrot_Paraphraser a58c87c3, read by hand"],
    "vc_models": ["GitHub facebookresearch/eai-vc 17a27aea (vc_models/src), read by hand"],
    "tuneavideo": ["GitHub showlab/Tune-A-Video 3c5583c0 / f0c5d9b7, read by hand"],
}

_FAIRSEQ_VOCODER = (
    "logging json Dict np torch nn F BaseFairseqModel register_model VocoderHubInterface "
    "get_window get_fourier_basis get_mel_filters TTSSpectrogram S2TDataConfig CodeHiFiGANModel HiFiGANModel "
    "logger PseudoInverseMelScale GriffinLim GriffinLimVocoder HiFiGANVocoder CodeHiFiGANVocoder "
    "get_vocoder")

# module -> space separated public names (added to what `_apis` has for the module).
MODULES = {
    "fairseq.models.text_to_speech": _FAIRSEQ_VOCODER,
    "fairseq.models.text_to_speech.hub_interface":
        "logging random Path Dict Optional Tuple torch nn logger TTSHubInterface "
        "VocoderHubInterface",
    "parrot": "Parrot parrot filters",
    "parrot.parrot": "Parrot",
    "vc_models": "os vc_models_dir_path vc_models_config_files vc_model_zoo models transforms "
                 "utils",
    "vc_models.models": "logging torch Image log zero_img load_model vit compression_layer",
    "vc_models.models.vit": "model_utils vit",
    "vc_models.models.vit.model_utils":
        "os sys urllib vc_models hydra omegaconf six VC1_BASE_NAME VC1_LARGE_NAME "
        "download_model_if_needed load_model",
    "tuneavideo": "pipelines models util data",
    "tuneavideo.pipelines": "pipeline_tuneavideo",
    "tuneavideo.pipelines.pipeline_tuneavideo":
        "inspect Callable List Optional Union dataclass np torch is_accelerate_available version "
        "CLIPTextModel CLIPTokenizer FrozenDict AutoencoderKL DiffusionPipeline DDIMScheduler "
        "DPMSolverMultistepScheduler EulerAncestralDiscreteScheduler EulerDiscreteScheduler "
        "LMSDiscreteScheduler PNDMScheduler deprecate logging BaseOutput rearrange "
        "UNet3DConditionModel logger TuneAVideoPipelineOutput TuneAVideoPipeline",
    "tuneavideo.models": "unet attention resnet",
    "tuneavideo.util": "os imageio np Union torch torchvision tqdm rearrange save_videos_grid "
                       "init_prompt next_step get_noise_pred_single ddim_loop ddim_inversion",
    "tuneavideo.data": "dataset",
}

# Modules that exist but whose names were not read: any attribute is accepted.
OPEN = ("parrot.filters", "vc_models.transforms", "vc_models.utils", "vc_models.models.vit.vit",
        "vc_models.models.compression_layer", "tuneavideo.models.unet",
        "tuneavideo.models.attention", "tuneavideo.models.resnet", "tuneavideo.data.dataset")

# Simple literal attributes.
VALUES = {
    "vc_models.models.vit.model_utils": {"VC1_BASE_NAME": "vc1_vitb",
                                         "VC1_LARGE_NAME": "vc1_vitl"},
}
