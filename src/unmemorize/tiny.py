"""Tiny randomly initialised models and a small BPE tokenizer, for tests and quick experiments.

A 4-layer, d=128 model with a 4,096-token BPE memorizes dozens of 200-token sequences in seconds
to a minute on CPU; with a 49k vocabulary the output layer dominates and it learns far slower.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Byte-level BPE like GPT-2's (no BOS, eos = pad), trained in about a second."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    return fast


def _config(arch: str, vocab_size: int, n_layer: int, d_model: int, n_head: int, n_positions: int, eos_id: int):
    common = dict(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    if arch == "gpt2":
        return GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head, n_positions=n_positions,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if arch == "gpt_neo":
        return GPTNeoConfig(num_layers=n_layer, hidden_size=d_model, num_heads=n_head,
                            max_position_embeddings=n_positions, attention_types=[[["global", "local"], n_layer // 2]],
                            window_size=n_positions, resid_dropout=0.0, embed_dropout=0.0,
                            attention_dropout=0.0, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(num_hidden_layers=n_layer, hidden_size=d_model, num_attention_heads=n_head,
                             intermediate_size=4 * d_model, max_position_embeddings=n_positions,
                             hidden_dropout=0.0, attention_dropout=0.0, **common)
    if arch == "llama":
        return LlamaConfig(num_hidden_layers=n_layer, hidden_size=d_model, num_attention_heads=n_head,
                           num_key_value_heads=max(1, n_head // 2), intermediate_size=2 * d_model,
                           max_position_embeddings=n_positions, tie_word_embeddings=True, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose gpt2, gpt_neo, gpt_neox or llama")


ARCHITECTURES = ("gpt2", "gpt_neo", "gpt_neox", "llama")


def tiny_model(arch: str = "gpt2", *, vocab_size: int = 4096, n_layer: int = 4, d_model: int = 128,
               n_head: int = 4, n_positions: int = 256, eos_id: int = 0, seed: int = 0):
    """A randomly initialised causal LM, deterministic for a given seed."""
    config = _config(arch, vocab_size, n_layer, d_model, n_head, n_positions, eos_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model
