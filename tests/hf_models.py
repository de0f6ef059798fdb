"""Tiny random transformers models, their tokenizers, and a Hugging Face cache to hold them.

Nothing is downloaded: each model is built from a config (hidden size <= 64,
2 layers), each tokenizer from a vocabulary written here, and both are saved
with ``save_pretrained`` and laid out as the Hub cache lays out a repo
(``models--org--name/refs/main``, ``snapshots/<revision>/...``).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import torch

WORDS = (
    "the a an is was and or not good bad great terrible movie film book plot actor "
    "i you we they it this that love hate like fine boring fun long short story end"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
REVISION = "0123456789abcdef0123456789abcdef01234567"


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokens = [*SPECIAL, *WORDS, *(f"##{c}" for c in "sdeyr")]
    vocab = {t: i for i, t in enumerate(tokens)}
    try:  # transformers >= 5 takes the vocabulary itself
        return BertTokenizerFast(vocab=vocab, model_max_length=32)
    except TypeError:  # pragma: no cover - transformers 4
        path = folder / "vocab.txt"
        path.write_text("\n".join(tokens) + "\n")
        return BertTokenizerFast(vocab_file=str(path), model_max_length=32)


def gpt2_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0}
    for w in WORDS:
        vocab.setdefault("Ġ" + w, len(vocab))
        vocab.setdefault(w, len(vocab))
    for c in "abcdefghijklmnopqrstuvwxyzĠ":
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=64,
    )


def make_bert(folder: Path, *, num_labels: int = 3, seed: int = 0, dtype=torch.float32):
    """A 2-layer BERT sequence classifier with its WordPiece tokenizer, saved in ``folder``."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = bert_tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).to(dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def make_gpt2(folder: Path, *, seed: int = 0):
    """A 2-layer GPT-2 causal LM with a word-level byte tokenizer, saved in ``folder``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer(folder)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def make_llama(folder: Path, *, seed: int = 0, dtype=torch.float32):
    """A 2-layer Llama causal LM (grouped-query attention, rotary positions, untied head)
    with the word-level byte tokenizer, saved in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = gpt2_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def make_vit(folder: Path, *, num_labels: int = 4, seed: int = 0):
    """A 2-layer ViT image classifier on 32x32 images, with its preprocessor config."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    model.save_pretrained(folder)
    folder.joinpath("preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": 32})
    )
    return model, None


def make_t5(folder: Path, *, seed: int = 0):
    """A 2-layer T5 encoder-decoder (seq2seq LM) over a 64-token vocabulary; no tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    return model, None


def make_whisper(folder: Path, *, seed: int = 0):
    """A 1+1-layer Whisper speech-to-text model on 8 mel bins and 32 frames; no processor."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=8,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=16,  # the encoder takes exactly 2 * 16 = 32 frames
        max_target_positions=32,
        decoder_start_token_id=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        dropout=0.0,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.save_pretrained(folder)
    return model, None


def make_swin(folder: Path, *, num_labels: int = 3, seed: int = 0):
    """A 2-stage Swin image classifier on 32x32 images (windows of 4 patches of 4 pixels)."""
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    torch.manual_seed(seed)
    model = SwinForImageClassification(config)
    model.save_pretrained(folder)
    return model, None


def cache_repo(hub: Path, repo: str, folder: Path, *, license: str | None = "apache-2.0") -> Path:
    """Lay ``folder`` out in the Hub cache ``hub`` as the repo ``repo``; return the snapshot."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / REVISION
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    if license:
        (snap / "README.md").write_text(f"---\nlicense: {license}\ntags:\n- test\n---\n# {repo}\n")
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    return snap


def tiny_cache(hub: Path, work: Path) -> dict:
    """The three tiny models in the cache ``hub``: test/tiny-bert, test/tiny-gpt2, test/tiny-vit."""
    made = {}
    for repo, make in (
        ("test/tiny-bert", make_bert),
        ("test/tiny-gpt2", make_gpt2),
        ("test/tiny-vit", make_vit),
    ):
        folder = work / repo.replace("/", "_")
        model, tok = make(folder)
        cache_repo(hub, repo, folder)
        made[repo] = (model, tok)
    return made


# -- one tiny model per architecture ----------------------------------------------
# Each config is transformers' own with the sizes cut down (hidden <= 32, 1-2
# layers); token ids are set inside each tiny vocabulary.


def _text(**kw) -> dict:
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    return {**sizes, "intermediate_size": 64, **kw}


def _audio(**kw) -> dict:
    conv = {"conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 8)}
    pos = {"num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}
    return {**_text(), **conv, **pos, "vocab_size": 12, "pad_token_id": 0, **kw}


def _vit(**kw) -> dict:
    return {**_text(), "image_size": 32, "patch_size": 8, "num_labels": 3, **kw}


def _seq2seq(**kw) -> dict:
    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "decoder_start_token_id": 2}
    return {**ids, **kw}


TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    # architecture -> (its config class, the config's arguments)
    "BertModel": ("BertConfig", _text(vocab_size=44)),
    "BertForMaskedLM": ("BertConfig", _text(vocab_size=44)),
    "BertForTokenClassification": ("BertConfig", _text(vocab_size=44, num_labels=5)),
    "GPT2DoubleHeadsModel": (
        "GPT2Config",
        {
            "vocab_size": 50,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
    ),
    "GPTNeoXForCausalLM": ("GPTNeoXConfig", _text(vocab_size=64, max_position_embeddings=64)),
    "T5ForConditionalGeneration": (
        "T5Config",
        _seq2seq(vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2),
    ),
    "BartForConditionalGeneration": (
        "BartConfig",
        _seq2seq(
            vocab_size=48,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=64,
        ),
    ),
    "WhisperForConditionalGeneration": (
        "WhisperConfig",
        _seq2seq(
            vocab_size=64,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_mel_bins=8,
            max_source_positions=16,
            max_target_positions=32,
            suppress_tokens=[],
            begin_suppress_tokens=[],
        ),
    ),
    "HubertForSequenceClassification": ("HubertConfig", _audio(num_labels=3)),
    "Wav2Vec2ForCTC": ("Wav2Vec2Config", _audio()),
    "ViTForImageClassification": ("ViTConfig", _vit()),
    "SwinForImageClassification": (
        "SwinConfig",
        {
            "image_size": 32,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 2],
            "window_size": 4,
            "num_labels": 3,
        },
    ),
    "SegformerForSemanticSegmentation": (
        "SegformerConfig",
        {
            "num_encoder_blocks": 2,
            "depths": [1, 1],
            "sr_ratios": [2, 1],
            "hidden_sizes": [16, 32],
            "patch_sizes": [7, 3],
            "strides": [4, 2],
            "num_attention_heads": [1, 2],
            "mlp_ratios": [2, 2],
            "decoder_hidden_size": 32,
            "num_labels": 3,
        },
    ),
    "YolosForObjectDetection": (
        "YolosConfig",
        _vit(image_size=[32, 32], num_detection_tokens=5),
    ),
    "CLIPModel": (
        "CLIPConfig",
        {
            "text_config": {
                **_text(vocab_size=50, max_position_embeddings=16),
                "bos_token_id": 0,
                "eos_token_id": 1,
                "pad_token_id": 1,
            },
            "vision_config": _vit(num_labels=2),
            "projection_dim": 16,
        },
    ),
}


def make_tiny(architecture: str, folder: Path | None = None, *, seed: int = 0):
    """The tiny ``architecture`` of TINY_CONFIGS, saved with ``save_pretrained`` in ``folder``."""
    import transformers

    config_class, kwargs = TINY_CONFIGS[architecture]
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config)
    if folder is not None:
        model.save_pretrained(folder)
    return model


def finetune_cache(hub: Path, work: Path) -> dict:
    """The tiny decoder and encoders the finetuning tests use, in the cache ``hub``:
    test/tiny-llama, test/tiny-gpt2 and test/tiny-bert."""
    made = {}
    for repo, make in (
        ("test/tiny-llama", make_llama),
        ("test/tiny-gpt2", make_gpt2),
        ("test/tiny-bert", make_bert),
    ):
        folder = work / repo.replace("/", "_")
        model, tok = make(folder)
        cache_repo(hub, repo, folder)
        made[repo] = (model, tok)
    return made


# -- a repository with its own code ------------------------------------------------

CUSTOM_CONFIGURATION = """
from transformers import PretrainedConfig


class CustomConfig(PretrainedConfig):
    model_type = "tb-custom-classifier"

    def __init__(self, hidden=4, **kwargs):
        self.hidden = hidden
        super().__init__(**kwargs)
"""

CUSTOM_MODELING = """
import torch
from transformers import PreTrainedModel

from .configuration_custom import CustomConfig


class CustomForSequenceClassification(PreTrainedModel):
    config_class = CustomConfig

    def __init__(self, config):
        super().__init__(config)
        self.body = torch.nn.Linear(config.hidden, config.hidden)
        self.classifier = torch.nn.Linear(config.hidden, config.num_labels)
        self.post_init()

    def forward(self, x):
        return self.classifier(torch.tanh(self.body(x)))
"""


def make_custom_classifier(folder: Path, *, hidden: int = 4, num_labels: int = 3, seed: int = 0):
    """A sequence classifier whose classes are its repository's own code (an ``auto_map`` in
    its config): ``classifier(tanh(body(x)))``, two Linear layers. Writes the code, config,
    weights and a WordPiece tokenizer (a standard one: the repository is custom through its
    config alone) to ``folder``; returns the weights, from which tests compute its outputs."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    bert_tokenizer(folder).save_pretrained(folder)
    (folder / "configuration_custom.py").write_text(textwrap.dedent(CUSTOM_CONFIGURATION))
    (folder / "modeling_custom.py").write_text(textwrap.dedent(CUSTOM_MODELING))
    config = {
        "model_type": "tb-custom-classifier",
        "architectures": ["CustomForSequenceClassification"],
        "hidden": hidden,
        "id2label": {str(i): f"L{i}" for i in range(num_labels)},
        "label2id": {f"L{i}": i for i in range(num_labels)},
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForSequenceClassification": "modeling_custom.CustomForSequenceClassification",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(seed)
    weights = {
        "body.weight": torch.randn(hidden, hidden, generator=generator),
        "body.bias": torch.randn(hidden, generator=generator),
        "classifier.weight": torch.randn(num_labels, hidden, generator=generator),
        "classifier.bias": torch.randn(num_labels, generator=generator),
    }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return weights


def custom_classifier_output(weights: dict, x: torch.Tensor) -> torch.Tensor:
    """What make_custom_classifier's model computes for ``x`` with ``weights``."""
    hidden = torch.tanh(x @ weights["body.weight"].T + weights["body.bias"])
    return hidden @ weights["classifier.weight"].T + weights["classifier.bias"]
