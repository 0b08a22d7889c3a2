"""A tiny SmolVLM backbone folder, built offline, for tests and the demo.

SmolVLA (``lerobot.policies.smolvla``) takes its VLM backbone by name (``SmolVLAConfig.vlm_model_name``) and, even
with ``load_vlm_weights=False``, reads ``AutoConfig`` and ``AutoProcessor`` from it; the pre-processor also loads
the tokenizer from the same name. :func:`build_tiny_vlm` writes a folder that satisfies all three without any
network access:

- ``config.json``: a ``SmolVLMConfig`` with a 4-layer llama text model (hidden 64, 4 heads, 2 KV heads, head_dim
  16) and a 2-layer vision encoder (hidden 32, patch 16, ``image_size`` pixels square), ``scale_factor`` 2, so
  each camera image becomes ``(image_size / 16 / 2) ** 2`` tokens;
- a ``SmolVLMProcessor`` (image, video processor and tokenizer): the tokenizer is a word-level
  ``tokenizers`` vocabulary (lower-cased, accents stripped, ``_`` read as a space, so BEHAVIOR task names such as
  ``turning_on_radio`` tokenise too) holding the SmolVLM special tokens SmolVLA needs
  (``fake_image_token_id``, ``global_image_token_id``), the ``<row_r_col_c>`` tokens and ~700 English words
  used by manipulation task descriptions; any other word maps to ``<unk>``.

The folder holds no weights: SmolVLA initialises such a backbone randomly (``load_vlm_weights=False``).
With 3 cameras at 64 px, a 32-dim state, 23-dim actions and chunk 10 the whole policy has ~0.5 M parameters.

:func:`build_smolvlm2_500m_standin` writes the same kind of folder at full size: the published architecture of
``HuggingFaceTB/SmolVLM2-500M-Video-Instruct`` (:data:`SMOLVLM2_500M`, the backbone of ``lerobot/smolvla_base``)
with the same tiny tokenizer; ``behavior_smolvla.policy.standin`` builds a whole random ``smolvla_base`` on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from behavior_smolvla.errors import ConfigError, PolicyLoadError

__all__ = ["SMOLVLM2_500M", "TINY_VLM_FORMAT", "build_smolvlm2_500m_standin", "build_tiny_vlm", "tiny_vlm_vocabulary"]

TINY_VLM_FORMAT = 1
"""Version of the folder layout below; written into ``tiny_vlm.json`` so a stale folder is detected."""

_MARKER = "tiny_vlm.json"
_FILES = ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json", _MARKER)

# SmolVLM's own special tokens (names from transformers' SmolVLMProcessor); ids are their positions here.
_PAD, _UNK, _BOS, _EOU = "<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>"
_FAKE_IMAGE, _IMAGE, _GLOBAL_IMAGE = "<fake_token_around_image>", "<image>", "<global-img>"
_SPECIAL = (_PAD, _UNK, _BOS, _EOU, _FAKE_IMAGE, _IMAGE, _GLOBAL_IMAGE)
# SmolVLMProcessor's image splitting names tiles <row_r_col_c>; SmolVLM2 uses up to a 6x6 grid.
_GRID = 6

_PATCH_SIZE = 16
_SCALE_FACTOR = 2

SMOLVLM2_500M = {
    "name": "SmolVLM2-500M-Video-Instruct",
    # text_config of https://huggingface.co/HuggingFaceTB/SmolVLM2-500M-Video-Instruct/blob/main/config.json
    # (SmolLM2-360M: 32 llama layers, hidden 960, MLP 2560, 15 query heads and 5 KV heads of 64 dims, RoPE theta
    # 1e5, 8192 positions, vocabulary 49,280 = SmolLM2's 49,152 + the image/row/col special tokens).
    "text_config": {
        "vocab_size": 49280,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    },
    # vision_config of the same file: SigLIP base patch-16/512 (the SmolVLM paper, arXiv 2504.05299, Table 1:
    # a 93 M vision encoder): 12 layers, hidden 768, MLP 3072, 12 heads, 512 px images, 16 px patches.
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
    },
    # Same file: "scale_factor": 4 (pixel shuffle: (512 / 16 / 4) ** 2 = 64 tokens per image, the processor's
    # image_seq_len) and untied input/output embeddings.
    "scale_factor": 4,
    "patch_size": 16,
    "tie_word_embeddings": False,
}
"""The published architecture sizes of SmolVLM2-500M-Video-Instruct, the backbone of ``lerobot/smolvla_base``."""

_WORDS = """
a about above across after again against all along also an and another any anything apart apron are area
around as at away back bag bags bake baked baking ball balloon balls banana bananas bar base baseball
basement basket baskets bath bathroom bathtub batteries battery be beach bean beans bed bedroom bedside beer
before behind below bench beneath beside between bin bins blanket blender block blocks blue board boards book
books bookshelf boot boots both bottle bottles bottom bow bowl bowls box boxes boxing bracelet bread break
breakfast brick bring bringing broom brown brush bucket bug bugs bulb burner butter by cabbage cabinet
cabinets cake can candle candles candy canned canning cans cap car card cardboard carpet carrot carrots carry
carrying carton case cat ceiling center cereal chair chairs charger cheese chest chicken child childrens
children chip chips chop chopping chops christmas cleaning clean cleaned clear clearing clip clock close
closed closet cloth clothes clothing coat coffee collect collecting color colored computer container
containers cook cooked cooker cooking cookie cookies cool cooler corner couch counter countertop cover
covered crate crib cup cupboard cups curtain cushion cut cutlery cutting decoration decorations deep desk
detergent dining dinner dirty dish dishes dishwasher dispose do dog doll door doors down drain drawer drawers
drink drinks drop dry dryer dust dustpan each easter edge egg eggs eight electric empty end every everything
eye fabric faucet fetch fill filled find fire firewood first fish five floor flower flowers fold folded
folding food foods for fork forks four freeze freezer fresh fridge from front fruit fruits full furniture
game garage garbage garden get getting gift gifts glass glasses glove gloves go goggles grab gray green
grill grocery groceries ground hall halloween hamper hand handle hang hanging hat have he head heat her here
high hold holder home hook hot hotdog hotdogs house household if in inside into iron is it item items its
jacket jar jars jug juice kettle key keys kitchen knife knives lamp laptop large last laundry lay lead leaf
leaves left leg lemon lemons less lid lift light lights like living load loading lock long low lower lunch
lunchbox make making many mat meal meat microwave middle milk mirror mop more most mousetrap mousetraps move
moving mug mugs napkin napkins near next night nine no not notebook now object objects of off office oil
old on one onion onions only onto open opened or orange oranges organize organized organizing other out
outfit outside oven over pack package packing pad paint pair pan pans paper pass pasta patio peach pear pen
pencil pens pepper person pet phone photo photos piano pick picking picture pictures pie pies piece pieces
pile pillow pillows pink pitcher pizza place placed placing plant plants plastic plate plates platter play
pliers plug pocket pole popcorn position pot potato potatoes pots pour prepare preparing press pull purple
push put puts putting radio rack rag rearrange rearranging receiver red refrigerator remote remove rest
right ring rinse robot rock room rope round rubber rug rugs run s sack salad salt sandwich saucepan sauce saw
scissors scrub scrubbing second see set setting setup seven shelf shelves shirt shoe shoes short shorts
shovel show shower side sink six skillet slice sliced slicing slide small so soap sock socks sofa soft some
sort sorting soup spatula spill sponge spoon spoons spray spraying squeeze stack stand station stir stool
storage store storing stove straight sugar suitcase surface sweep switch t table tables take tape tea
teapot ten that the their them then there these they thing things third this those three through throw
tidy tidying tie tile tin tissue to toast toaster today together toilet tomato tomatoes tongs too tool
toolbox tools top towel towels toy toys trash tray trays tree trees trumpet tub tube turn turning turned
tv two under unload unloading unpack until up upon upper use used using utensil utensils vacuum vase
vegetable vegetables wall wallet want wardrobe warm wash washer washing waste watch water watering way
we were wet what wheel when where which white while who window windows wine wipe wiping wire with within
without wood wooden work wrap wrapping yellow you your
""".split()
# Punctuation and digits that task strings carry ("Pick up the cup.", "step 2"); the pre-tokenizer splits
# them off words.
_SYMBOLS = list(".,;:!?'\"-()/&") + [str(d) for d in range(10)]


def tiny_vlm_vocabulary() -> dict[str, int]:
    """The tiny tokenizer's word-level vocabulary: token -> id (ids 0..N-1, stable across calls and machines).

    Order: SmolVLM special tokens (``<pad>`` 0, ``<unk>`` 1, ...), the 36 ``<row_r_col_c>`` tile tokens, symbols
    and digits, then the sorted, de-duplicated word list.
    """
    grid = [f"<row_{r}_col_{c}>" for r in range(1, _GRID + 1) for c in range(1, _GRID + 1)]
    tokens = list(_SPECIAL) + grid + _SYMBOLS + sorted(set(_WORDS) - set(_SYMBOLS))
    return {token: i for i, token in enumerate(tokens)}


def _build_params(image_size: int) -> dict:
    vocab = tiny_vlm_vocabulary()
    digest = hashlib.sha256(json.dumps(vocab, sort_keys=True).encode()).hexdigest()[:16]
    return {"format": TINY_VLM_FORMAT, "image_size": image_size, "vocab_sha256_16": digest}


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES)


def _write_folder(folder: Path, image_size: int, params: dict, shape: dict | None = None) -> None:
    """Write config, processor and tokenizer; ``shape`` = None: the tiny sizes, else :data:`SMOLVLM2_500M`."""
    # Imported here: transformers takes seconds to import and most of the package never needs it.
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    vocab = tiny_vlm_vocabulary()
    backend = Tokenizer(models.WordLevel(vocab, unk_token=_UNK))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase(), normalizers.Replace("_", " ")]
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=_PAD,
        unk_token=_UNK,
        bos_token=_BOS,
        eos_token=_EOU,
        # SmolVLMProcessor and SmolVLA read these attributes (and their *_id) from the tokenizer.
        extra_special_tokens={
            "fake_image_token": _FAKE_IMAGE,
            "image_token": _IMAGE,
            "global_image_token": _GLOBAL_IMAGE,
            "end_of_utterance_token": _EOU,
        },
        model_max_length=2048,
    )
    size = {"longest_edge": image_size}
    patch_size = shape["patch_size"] if shape else _PATCH_SIZE
    scale_factor = shape["scale_factor"] if shape else _SCALE_FACTOR
    tokens_per_side = image_size // patch_size // scale_factor
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=size, max_image_size=size, do_image_splitting=False),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(size=size, max_image_size=size),
        image_seq_len=tokens_per_side**2,
    )
    special_ids = {
        "pad_token_id": vocab[_PAD],
        "bos_token_id": vocab[_BOS],
        "eos_token_id": vocab[_EOU],
    }
    if shape is None:
        text_config = {
            "model_type": "llama",
            "vocab_size": len(vocab),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            **special_ids,
        }
        vision_config = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": _PATCH_SIZE,
        }
        extra: dict = {}
    else:
        text_config = {"model_type": "llama", **shape["text_config"], **special_ids}
        vision_config = dict(shape["vision_config"])
        extra = {"tie_word_embeddings": shape["tie_word_embeddings"]}
    config = SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=scale_factor,
        image_token_id=vocab[_IMAGE],
        pad_token_id=vocab[_PAD],
        **extra,
    )
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    # Written last: its presence means the folder is complete.
    (folder / _MARKER).write_text(json.dumps(params, indent=2) + "\n")


def build_tiny_vlm(out_dir: str | Path, *, image_size: int = 64) -> Path:
    """Write (or reuse) a tiny SmolVLM backbone folder usable as ``SmolVLAConfig.vlm_model_name``.

    Args:
        out_dir: folder to create. If it already holds a complete tiny VLM built with the same parameters it is
            reused untouched (idempotent; safe to call from several processes: the folder is built in a
            temporary sibling and renamed into place).
        image_size: square input size of the vision encoder, in pixels; a multiple of 32 (patch 16 times pixel
            shuffle 2). Set SmolVLA's ``resize_imgs_with_padding`` to ``(image_size, image_size)``.

    Returns:
        ``out_dir`` as an absolute :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``image_size`` is not a positive multiple of 32.
        PolicyLoadError: ``out_dir`` exists and is a complete tiny VLM built with other parameters (another
            ``image_size`` or vocabulary), or is a non-empty folder that is not a tiny VLM.
    """
    if not isinstance(image_size, int) or image_size <= 0 or image_size % (_PATCH_SIZE * _SCALE_FACTOR):
        raise ConfigError(
            f"tiny VLM image_size={image_size!r} must be a positive multiple of {_PATCH_SIZE * _SCALE_FACTOR} "
            f"(patch size {_PATCH_SIZE} x pixel-shuffle factor {_SCALE_FACTOR}); use e.g. 64"
        )
    return _build_folder(out_dir, image_size, _build_params(image_size), None)


def _build_folder(out_dir: str | Path, image_size: int, params: dict, shape: dict | None) -> Path:
    """Reuse ``out_dir`` when it holds the same build, else build in a temporary sibling and rename into place."""
    folder = Path(out_dir).expanduser().resolve()
    if _is_complete(folder):
        existing = json.loads((folder / _MARKER).read_text())
        if existing != params:
            raise PolicyLoadError(
                f"{folder} holds a local VLM built with {existing}, not {params}; delete it or choose another folder"
            )
        return folder
    if folder.exists() and any(p.name not in _FILES for p in folder.iterdir()):
        raise PolicyLoadError(f"{folder} exists and is not a local VLM folder; choose an empty or new folder")

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_folder(staging, image_size, params, shape)
        if folder.exists():  # an interrupted earlier build: only known file names are in it (checked above)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process renamed its own build into place first; use it when it is the same build.
            if not (_is_complete(folder) and json.loads((folder / _MARKER).read_text()) == params):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def build_smolvlm2_500m_standin(out_dir: str | Path) -> Path:
    """Write (or reuse) a backbone folder shaped like ``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``, no weights.

    The architecture is the published one (:data:`SMOLVLM2_500M`: a 32-layer, 960-wide llama text model with 15
    query / 5 KV heads of 64 dims and a 49,280-token vocabulary; a 12-layer, 768-wide SigLIP vision encoder on
    512 x 512 images in 16 px patches; pixel shuffle 4, so 64 tokens per image), so a SmolVLA built on it has the
    parameter count, tensor shapes, memory and compute of ``lerobot/smolvla_base``. Only the tokenizer differs:
    the tiny word-level vocabulary of :func:`tiny_vlm_vocabulary` (~760 ids, all inside the 49,280-row embedding),
    which SmolVLA only uses to turn the task string into ids. SmolVLA initialises the weights randomly
    (``load_vlm_weights=False``).

    Args:
        out_dir: folder to create; reused untouched when it already holds this build (same rules as
            :func:`build_tiny_vlm`).

    Returns:
        ``out_dir`` as an absolute :class:`~pathlib.Path`.

    Raises:
        PolicyLoadError: ``out_dir`` holds another build or is a non-empty folder that is not a local VLM.
    """
    image_size = SMOLVLM2_500M["vision_config"]["image_size"]
    params = {**_build_params(image_size), "shape": SMOLVLM2_500M["name"]}
    return _build_folder(out_dir, image_size, params, SMOLVLM2_500M)
