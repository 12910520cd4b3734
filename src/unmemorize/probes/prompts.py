"""Prompt variants and sampling: does the suffix come out from a reworded prefix, or when sampled?
(docs/method.md §3.8)

The weights stay; what changes is the prompt. For each forget sequence x with its extraction window
(k prefix tokens, m suffix tokens, :func:`unmemorize.memorization.extraction_window`) the prefix
x[:k] is perturbed — other letter case, more whitespace, only its last tokens, or inside the model's
chat template — and the true suffix s = x[k:k+m] is appended. One teacher-forced pass over
(prompt + s) gives everything, without decoding:

* greedy decoding from the prompt reproduces s token by token until the first position where the
  argmax is not the true token (given the true tokens before it, which is what greedy decoding had
  produced up to there): matched = that index / m, extraction = [matched = 1], and suffix MA = the
  share of the m positions whose argmax is the true token;
* sampling at temperature T (top-k) reproduces the first j tokens with probability Π_{i<j} q_i
  (attacks/extraction.py, docs/method.md §3.4): matched = its expected share of s, p_suffix = the
  probability one sample is s, p_any = 1 − (1 − p_suffix)^n for n samples, and n seeded draws.

The unperturbed prefix through the same function is the probe's "before".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from unmemorize import forward
from unmemorize.attacks.extraction import (
    expected_match_fraction,
    greedy_matched_length,
    match_probabilities,
    sample_matched_lengths,
)
from unmemorize.attacks.tokens import position_statistics
from unmemorize.data import SequenceSet
from unmemorize.memorization import extraction_window

VARIANTS = ("prompt-case", "prompt-whitespace", "prompt-truncate", "prompt-chat")


# ---------------------------------------------------------------- the variants (pure)


def change_case(text: str) -> str:
    """The text in lower case; a text that is lower case already, in upper case."""
    low = text.lower()
    return low if low != text else text.upper()


def change_whitespace(text: str) -> str:
    """One more space after every run of whitespace (a text without any gets a leading space)."""
    out = re.sub(r"\s+", lambda m: m.group(0) + " ", text)
    return out if out != text else " " + text


def truncate(tokens: list[int], keep: float) -> list[int]:
    """The last max(1, round(keep · k)) of the k prefix tokens."""
    n = max(1, round(keep * len(tokens)))
    return list(tokens[-n:])


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as the user's message in the model's chat template, ending with the assistant's turn
    (``apply_chat_template(…, add_generation_prompt=True)``): the suffix is the answer the model gives."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def encode(tokenizer, text: str) -> list[int]:
    """A prompt's tokens: the text's own (special tokens a template spells out are read as such, none added)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def variant(name: str, tokenizer, prefix: list[int], keep: float = 0.5) -> list[int]:
    """The tokens of prompt variant ``name`` of the prefix tokens ``prefix`` (its text as the tokenizer decodes it)."""
    if name == "prompt-truncate":
        return truncate(prefix, keep)
    text = tokenizer.decode(prefix)
    if name == "prompt-case":
        return encode(tokenizer, change_case(text))
    if name == "prompt-whitespace":
        return encode(tokenizer, change_whitespace(text))
    if name == "prompt-chat":
        return encode(tokenizer, chat_prompt(tokenizer, text))
    raise ValueError(f"unknown prompt variant {name!r}; choose from {', '.join(VARIANTS)}")


# ---------------------------------------------------------------- the windows and the pass


@dataclass
class Windows:
    """The extraction window of each forget sequence: rows with a suffix (the others are unmeasured)."""

    rows: list[int]  # rows of the set that have one (L ≥ 2)
    prefixes: list[list[int]]
    suffixes: list[list[int]]


def windows(seqs: SequenceSet, k: int, m: int) -> Windows:
    rows, prefixes, suffixes = [], [], []
    for r in range(len(seqs)):
        L = int(seqs.lengths[r])
        prefix = None if seqs.prefix_lengths is None else int(seqs.prefix_lengths[r])
        kk, mm = extraction_window(L, prefix, k, m)
        if L < 2 or mm < 1:
            continue
        x = seqs.input_ids[r, :L].tolist()
        rows.append(r)
        prefixes.append(x[:kk])
        suffixes.append(x[kk:kk + mm])
    return Windows(rows, prefixes, suffixes)


@dataclass
class SuffixStats:
    """Per prompt: whether each suffix position's argmax is the true token, and q (the true token's
    probability under the sampler) at each temperature."""

    correct: list[np.ndarray]
    q: dict[float, list[np.ndarray]]
    cut: int = 0  # prompts cut from the left to fit the model's context


@torch.no_grad()
def suffix_statistics(model, prompts: list[list[int]], suffixes: list[list[int]], *, pad_id: int,
                      temperatures: tuple[float, ...] = (), top_k: int | None = None, batch_size: int = 8,
                      progress=None, label: str = "prompt pass") -> SuffixStats:
    """One teacher-forced pass over each prompt followed by its true suffix (prompts longer than the
    model's context allows are cut from the left)."""
    from unmemorize.models import max_positions

    context = max_positions(model)
    rows, starts, cut = [], [], 0
    for p, s in zip(prompts, suffixes):
        p = list(p) or [pad_id]
        if context is not None and len(p) + len(s) > context:
            p, cut = p[len(p) + len(s) - context:], cut + 1
        rows.append(p + list(s))
        starts.append(len(p))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    correct: list[np.ndarray] = [np.zeros(0, bool)] * len(rows)
    q: dict[float, list[np.ndarray]] = {t: [np.zeros(0)] * len(rows) for t in temperatures}
    for batch, logits in forward.teacher_forced(model, ids, lengths, batch_size=batch_size, progress=progress,
                                                label=label):
        for b, r in enumerate(batch.rows):
            start, m = starts[r], len(suffixes[r])
            z = logits[b, start - 1:start - 1 + m]  # position t predicts token t + 1
            target = batch.input_ids[b, start:start + m]
            correct[r] = (z.argmax(-1) == target).cpu().numpy()
            for t in temperatures:
                q[t][r] = position_statistics(z, target, top_k, t)[3].double().cpu().numpy()
    return SuffixStats(correct, q, cut)


# ---------------------------------------------------------------- the measures (pure)


def greedy_measures(correct: np.ndarray) -> dict[str, float]:
    """suffix MA, matched share and exact extraction of greedy decoding, from the suffix's correct flags."""
    m = len(correct)
    matched = greedy_matched_length(correct)
    return {"suffix_ma": float(np.mean(correct)), "matched": matched / m, "extraction": float(matched == m)}


def sampling_measures(q: np.ndarray, samples: int, rng: np.random.Generator) -> dict[str, float]:
    """Expected matched share, P(one sample is the suffix), P(any of n is), and n seeded draws' hits."""
    p = float(match_probabilities(q)[-1])
    hits = int((sample_matched_lengths(q, samples, rng) >= len(q)).sum())
    return {"matched": expected_match_fraction(q), "p_suffix": p, "p_any": 1.0 - (1.0 - p) ** samples,
            "hits": float(hits)}


def greedy_as_sampling(correct: np.ndarray, samples: int) -> dict[str, float]:
    """Greedy decoding in the sampling probe's measures (its baseline): every "sample" is the greedy one."""
    g = greedy_measures(correct)
    return {"matched": g["matched"], "p_suffix": g["extraction"], "p_any": g["extraction"],
            "hits": g["extraction"] * samples}
