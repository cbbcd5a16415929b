"""Tiny random-weight Qwen3-TTS models of the real architecture, for offline tests.

The dirs have the real layout (``config.json``, ``generation_config.json``, the
text tokenizer and processor files, ``speech_tokenizer/``), so they load through
``Qwen3TTSModel.from_pretrained`` exactly like hub checkpoints. Only the sizes
shrink; the codec keeps its 16 code groups, the 3072-entry talker vocabulary
with the real control ids, 2048-entry codebooks, and 1920 samples per frame.

In conftest::

    from tests.qwen_tiny import qwen_tiny_models  # noqa: F401  (session fixture)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

_MARKER = ".tiny-complete"

# Real control ids of the 12 Hz checkpoints (talker vocabulary of 3072).
_CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
_LANGUAGES = {"english": 2050, "chinese": 2055, "german": 2053, "french": 2061}
_HIDDEN = 32
TINY_MAX_NEW_TOKENS = 25  # so 24 frames per segment


def _text_tokenizer():
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


def _talker_config(text_vocab: int) -> dict:
    head = 16
    return {
        "vocab_size": 3072,
        "hidden_size": _HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": head,
        "rope_theta": 1_000_000,
        "rope_scaling": {"interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"},
        "num_code_groups": 16,
        "text_hidden_size": _HIDDEN,
        "text_vocab_size": text_vocab,
        "codec_language_id": dict(_LANGUAGES),
        "spk_id": {},
        "spk_is_dialect": {},
        **_CODEC_IDS,
        "code_predictor_config": {
            "vocab_size": 2048,
            "hidden_size": _HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": head,
            "rope_theta": 1_000_000,
            "num_code_groups": 16,
        },
    }


def _speech_tokenizer(path: Path) -> None:
    import torch
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from transformers import EncodecFeatureExtractor

    encoder = {
        "hidden_size": 32,
        "num_filters": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 64,
        "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16,
        "num_quantizers": 16,
        "num_semantic_quantizers": 1,
        "upsample_groups": 32,
    }
    decoder = {
        "hidden_size": 32,
        "latent_dim": 32,
        "codebook_dim": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "decoder_dim": 32,
        "sliding_window": 72,
    }
    config = Qwen3TTSTokenizerV2Config(encoder_config=encoder, decoder_config=decoder)
    torch.manual_seed(99)
    model = Qwen3TTSTokenizerV2Model(config).eval()
    with torch.no_grad():  # codebooks start as zero sums: every code would decode to silence
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("embedding_sum", "embed_sum")):
                tensor.copy_(torch.randn_like(tensor))
        # transformers' std-0.02 init makes a deep conv stack output ~1e-9: use
        # torch's fan-in init so the tiny codec speaks at an audible, testable level.
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


def _build_one(path: Path, kind: str, tokenizer) -> None:
    import torch
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration, Qwen3TTSProcessor

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3TTSConfig(
        talker_config=_talker_config(len(tokenizer)),
        speaker_encoder_config={
            "enc_dim": _HIDDEN,
            "enc_channels": [16, 16, 16, 16, 48],
            "enc_attention_channels": 8,
            "enc_se_channels": 8,
            "enc_res2net_scale": 4,
        },
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size="1b7",
        tts_model_type=kind,
        im_start_token_id=ids("<|im_start|>"),
        im_end_token_id=ids("<|im_end|>"),
        tts_pad_token_id=ids("<|tts_pad|>"),
        tts_bos_token_id=ids("<|tts_bos|>"),
        tts_eos_token_id=ids("<|tts_eos|>"),
    )
    config.architectures = ["Qwen3TTSForConditionalGeneration"]
    torch.manual_seed(1234 if kind == "base" else 4321)
    Qwen3TTSForConditionalGeneration(config).eval().save_pretrained(path)
    Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(path)
    _trim_speaker_encoder_config(path / "config.json")
    # Greedy and short: random weights never say EOS, and greedy makes every
    # stream reproducible, so server tests can compare concurrent with solo runs.
    generate = {
        "do_sample": False,
        "top_k": 50,
        "top_p": 1.0,
        "temperature": 0.9,
        "repetition_penalty": 1.05,
        "subtalker_dosample": False,
        "subtalker_top_k": 50,
        "subtalker_top_p": 1.0,
        "subtalker_temperature": 0.9,
        "max_new_tokens": TINY_MAX_NEW_TOKENS,
    }
    (path / "generation_config.json").write_text(json.dumps(generate, indent=2))
    _speech_tokenizer(path / "speech_tokenizer")


def build_tiny_models(root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Build (or reuse) ``root/design`` and ``root/base``; returns their paths."""
    from server.engines.qwen import compat

    compat.install()
    root = Path(root)
    design, base = root / "design", root / "base"
    if (root / _MARKER).exists():
        return design, base
    tokenizer = _text_tokenizer()
    _build_one(design, "voice_design", tokenizer)
    _build_one(base, "base", tokenizer)
    (root / _MARKER).write_text("ok")
    return design, base


@pytest.fixture(scope="session")
def qwen_tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(design_dir, base_dir) built once per test session (or from $QWEN_TINY_DIR)."""
    cached = os.environ.get("QWEN_TINY_DIR")
    root = Path(cached) if cached else tmp_path_factory.mktemp("qwen-tiny")
    return build_tiny_models(root)


if __name__ == "__main__":
    print(*build_tiny_models(tempfile.mkdtemp(prefix="qwen-tiny-")))
