"""Random-weight Qwen3-TTS models of the real architecture, tiny or at real size.

The dirs have the real layout (``config.json``, ``generation_config.json``, the
text tokenizer and processor files, ``speech_tokenizer/``), so they load through
``Qwen3TTSModel.from_pretrained`` (and anything built on it, faster-qwen3-tts
included) exactly like hub checkpoints. Every size keeps the codec's 16 code
groups, the 3072-entry talker vocabulary with the real control ids, 2048-entry
codebooks and 1920 samples per frame.

``tiny`` is what the test suite runs (``tests/qwen_tiny.py``); ``0.6b`` and
``1.7b`` have the released checkpoints' dimensions, text vocabulary (151936)
and 12 Hz codec, so time per step matches the real models: it does not depend
on the weight values. Their text tokenizer is a small BPE: only the embedding
matrix needs the real size. Build those on a GPU (``device="cuda"``): weights
are created and initialised there, in the target dtype.

    python -m bench.qwen_models 1.7b /tmp/qwen-1.7b     # prints the two dirs
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = ".tiny-complete"  # kept from the tiny builder: $QWEN_TINY_DIR caches stay valid
TINY_MAX_NEW_TOKENS = 25  # so 24 frames per segment

# Real control ids of the 12 Hz checkpoints (talker vocabulary of 3072).
CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
_LANGUAGES = {"english": 2050, "chinese": 2055, "german": 2053, "french": 2061}
TEXT_VOCAB = 151936

# The released checkpoints' generation_config.json.
REAL_GENERATION = {
    "do_sample": True,
    "top_k": 50,
    "top_p": 1.0,
    "temperature": 0.9,
    "repetition_penalty": 1.05,
    "subtalker_dosample": True,
    "subtalker_top_k": 50,
    "subtalker_top_p": 1.0,
    "subtalker_temperature": 0.9,
    "max_new_tokens": 8192,
}
# Greedy and short: random weights never say EOS, and greedy makes every
# stream reproducible, so server tests can compare concurrent with solo runs.
TINY_GENERATION = {
    **REAL_GENERATION,
    "do_sample": False,
    "subtalker_dosample": False,
    "max_new_tokens": TINY_MAX_NEW_TOKENS,
}


@dataclass(frozen=True)
class ModelSize:
    name: str
    talker: dict[str, Any]
    predictor: dict[str, Any]
    speaker: dict[str, Any]
    codec_encoder: dict[str, Any]
    codec_decoder: dict[str, Any]
    text_vocab: int | None  # None: the tokenizer's own size
    generation: dict[str, Any] = field(default_factory=lambda: dict(REAL_GENERATION))
    eos_reachable: bool = True


def _transformer(hidden: int, ffn: int, layers: int, heads: int, kv: int, head_dim: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
    }


_TINY = ModelSize(
    name="tiny",
    talker={**_transformer(32, 64, 2, 2, 1, 16), "text_hidden_size": 32, "mrope_section": [4, 2, 2]},
    predictor=_transformer(32, 64, 1, 2, 1, 16),
    speaker={
        "enc_dim": 32,
        "enc_channels": [16, 16, 16, 16, 48],
        "enc_attention_channels": 8,
        "enc_se_channels": 8,
        "enc_res2net_scale": 4,
    },
    codec_encoder={
        **_transformer(32, 64, 1, 2, 2, 16),
        "num_filters": 4,
        "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16,
        "num_quantizers": 16,
        "num_semantic_quantizers": 1,
        "upsample_groups": 32,
    },
    codec_decoder={  # no head_dim: the decoder derives it (16), and the tiny config stays as it was
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "latent_dim": 32,
        "codebook_dim": 16,
        "decoder_dim": 32,
        "sliding_window": 72,
    },
    text_vocab=None,
    generation=dict(TINY_GENERATION),
)
# Upstream configs (Qwen/Qwen3-TTS-12Hz-*): the 12 Hz codec's encoder is Mimi's
# defaults; its decoder and the speaker encoder are spelled out.
_CODEC_DECODER = {
    **_transformer(512, 1024, 8, 16, 16, 64),
    "latent_dim": 1024,
    "codebook_dim": 512,
    "codebook_size": 2048,
    "decoder_dim": 1536,
    "num_quantizers": 16,
    "num_semantic_quantizers": 1,
    "semantic_codebook_size": 4096,
    "vector_quantization_hidden_dimension": 512,
    "sliding_window": 72,
    "upsample_rates": [8, 5, 4, 3],
    "upsampling_ratios": [2, 2],
}
_SPEAKER = {
    "mel_dim": 128,
    "enc_channels": [512, 512, 512, 512, 1536],
    "enc_kernel_sizes": [5, 3, 3, 3, 1],
    "enc_dilations": [1, 2, 3, 4, 1],
    "enc_attention_channels": 128,
    "enc_res2net_scale": 8,
    "enc_se_channels": 128,
    "sample_rate": 24000,
}
_PREDICTOR = _transformer(1024, 3072, 5, 16, 8, 128)


def _real(name: str, hidden: int, ffn: int) -> ModelSize:
    return ModelSize(
        name=name,
        talker={**_transformer(hidden, ffn, 28, 16, 8, 128), "text_hidden_size": 2048, "mrope_section": [24, 20, 20]},
        predictor=dict(_PREDICTOR),
        speaker={**_SPEAKER, "enc_dim": hidden},  # the x-vector is a talker input embedding
        codec_encoder={},
        codec_decoder=dict(_CODEC_DECODER),
        text_vocab=TEXT_VOCAB,
        eos_reachable=False,
    )


SIZES = {"tiny": _TINY, "0.6b": _real("0.6b", 1024, 3072), "1.7b": _real("1.7b", 2048, 6144)}


def text_tokenizer() -> Any:
    """A byte-level BPE in Qwen2's clothes; ``<|im_start|>assistant\\n`` is 3 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|tts_pad|>", "<|tts_bos|>", "<|tts_eos|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["assistant user system", "Hello world. The quick brown fox jumps over the lazy dog."] * 50
    tok.train_from_iterator(corpus, trainer)
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    assert len(fast("<|im_start|>assistant\n")["input_ids"]) == 3
    return fast


def _talker_config(size: ModelSize, text_vocab: int) -> dict[str, Any]:
    talker = dict(size.talker)
    mrope = talker.pop("mrope_section")
    return {
        "vocab_size": 3072,
        **talker,
        "rope_theta": 1_000_000,
        "rope_scaling": {"interleaved": True, "mrope_section": mrope, "rope_type": "default"},
        "num_code_groups": 16,
        "text_vocab_size": text_vocab,
        "codec_language_id": dict(_LANGUAGES),
        "spk_id": {},
        "spk_is_dialect": {},
        **CODEC_IDS,
        "code_predictor_config": {"vocab_size": 2048, **size.predictor, "rope_theta": 1_000_000, "num_code_groups": 16},
    }


@contextlib.contextmanager
def _building_on(device: str, dtype: Any) -> Iterator[None]:
    """New parameters are created (and initialised) on ``device`` in ``dtype``."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _speech_tokenizer(path: Path, size: ModelSize, device: str) -> None:
    import torch
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from transformers import EncodecFeatureExtractor

    config = Qwen3TTSTokenizerV2Config(encoder_config=dict(size.codec_encoder), decoder_config=dict(size.codec_decoder))
    torch.manual_seed(99)
    with _building_on(device, torch.float32):  # the released codec is stored in float32 too
        model = Qwen3TTSTokenizerV2Model(config).eval()
    with torch.no_grad():  # codebooks start as zero sums: every code would decode to silence
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("embedding_sum", "embed_sum")):
                tensor.copy_(torch.randn_like(tensor))
        # transformers' std-0.02 init makes a deep conv stack output ~1e-9: use
        # torch's fan-in init so the codec speaks at an audible, testable level.
        for module in model.decoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear)):
                module.reset_parameters()
    model.save_pretrained(path)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0).save_pretrained(path)


def _trim_speaker_encoder_config(path: Path) -> None:
    # Its config class takes no **kwargs; real checkpoints carry only its own keys.
    import inspect

    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig

    allowed = set(inspect.signature(Qwen3TTSSpeakerEncoderConfig.__init__).parameters) - {"self"}
    config = json.loads(path.read_text())
    sub = config["speaker_encoder_config"]
    config["speaker_encoder_config"] = {k: v for k, v in sub.items() if k in allowed}
    path.write_text(json.dumps(config, indent=2))


def _build_one(path: Path, kind: str, tokenizer: Any, size: ModelSize, device: str, dtype: Any) -> None:
    import torch
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration, Qwen3TTSProcessor

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3TTSConfig(
        talker_config=_talker_config(size, size.text_vocab or len(tokenizer)),
        speaker_encoder_config=dict(size.speaker),
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size="0b6" if size.name == "0.6b" else "1b7",
        tts_model_type=kind,
        im_start_token_id=ids("<|im_start|>"),
        im_end_token_id=ids("<|im_end|>"),
        tts_pad_token_id=ids("<|tts_pad|>"),
        tts_bos_token_id=ids("<|tts_bos|>"),
        tts_eos_token_id=ids("<|tts_eos|>"),
    )
    config.architectures = ["Qwen3TTSForConditionalGeneration"]
    torch.manual_seed(1234 if kind == "base" else 4321)
    with _building_on(device, dtype):
        model = Qwen3TTSForConditionalGeneration(config).eval()
    if not size.eos_reachable:
        # A zero row gives EOS logit 0 while ~half of 2048 random logits are
        # positive: never argmax, never in the top 50, so every runner
        # (faster-qwen3-tts too, whose loop we cannot patch) runs to its cap.
        with torch.no_grad():
            model.talker.codec_head.weight[CODEC_IDS["codec_eos_token_id"]].zero_()
    model.save_pretrained(path)
    Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(path)
    _trim_speaker_encoder_config(path / "config.json")
    (path / "generation_config.json").write_text(json.dumps(size.generation, indent=2))
    del model
    _speech_tokenizer(path / "speech_tokenizer", size, device)


def build_models(root: str | os.PathLike[str], size: str = "tiny", *, device: str = "cpu", dtype: str | None = None) -> tuple[Path, Path]:
    """Build (or reuse) ``root/design`` and ``root/base`` of ``size``; returns their paths.

    ``dtype`` of the talker weights: float32 for tiny, bfloat16 (what the real
    checkpoints store) otherwise.
    """
    import torch

    from server.engines.qwen import compat

    compat.install()
    spec = SIZES[size]
    root = Path(root)
    design, base = root / "design", root / "base"
    marker = root / (MARKER if size == "tiny" else f".{size}-complete")
    if marker.exists():
        return design, base
    torch_dtype = getattr(torch, dtype or ("float32" if size == "tiny" else "bfloat16"))
    tokenizer = text_tokenizer()
    _build_one(design, "voice_design", tokenizer, spec, device, torch_dtype)
    _build_one(base, "base", tokenizer, spec, device, torch_dtype)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    marker.write_text("ok")
    return design, base


if __name__ == "__main__":
    import tempfile

    which = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    where = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix=f"qwen-{which}-")
    on = "cuda" if which != "tiny" else "cpu"
    print(*build_models(where, which, device=on))
