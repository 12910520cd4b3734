"""Pure scoring functions of the utility suite: strings and numbers in, numbers out.

Each function states its formula and the docs/method.md section it implements. They hold no model
and no data; :mod:`unmemorize.utility.suite` feeds them what the model produced.

Every utility metric is a ratio of two sums over examples (accuracy = Σ correct / n, token-mean
CE = Σ nll / Σ tokens, …), which is what lets :func:`ratio_of_sums` serve for the point estimate
and for every bootstrap resample alike.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation as the original code applies it (docs/method.md §6.2, §6.3):
    lower-case → drop every ``string.punctuation`` character → replace the articles a/an/the by a
    space → collapse whitespace → delete ``<extra_id_0>`` / ``<extra_id_1>``.

    The order is the original's; punctuation goes first, so the last step never finds anything.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    text = " ".join(text.split())
    return text.replace("<extra_id_0>", "").replace("<extra_id_1>", "")


def unigram_f1(prediction: str, ground_truth: str) -> float:
    """Unigram F1 of normalised tokens (docs/method.md §6.2, §6.3).

    same = |Counter(pred) ∩ Counter(gold)|; P = same/|pred|, R = same/|gold|, F1 = 2PR/(P+R);
    0 when nothing overlaps (including an empty prediction or an empty gold answer).
    """
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, ground_truth: str) -> bool:
    """EM = [normalize_answer(pred) == normalize_answer(gold)]  (docs/method.md §6.2)."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def clean_up_tokenization(text: str) -> str:
    """The decode clean-up the original code's tokenizer applied by default (transformers < 4.45,
    ``clean_up_tokenization_spaces=True``): remove the space before . ? ! , and English
    contractions. transformers 5 refuses it for BPE tokenizers, so it is applied here, after
    decoding, to keep LAMBADA's exact match and the dialogue F1 as the original computed them.
    """
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


def choice_score(token_logprobs: Sequence[float]) -> float:
    """score(context, choice) = −Σ_t log p(choice_t | context, choice_<t): a sum over the choice's
    tokens with no length normalisation (docs/method.md §6.1, step 2)."""
    return -float(np.sum(np.asarray(token_logprobs, dtype=np.float64)))


def predict_choice(scores: Sequence[float]) -> int:
    """prediction = argmin_k score_k, the first index on ties (``torch.argmin``'s rule; §6.1 step 3)."""
    return int(np.argmin(np.asarray(scores, dtype=np.float64)))


def lambada_correct(greedy: Sequence[int], target: Sequence[int], predicted_text: str, target_text: str) -> bool:
    """LAMBADA accuracy of one example (docs/method.md §6.2): 1 if the greedy argmax equals the target
    at every target position, or if the decoded strings match after SQuAD normalisation."""
    all_tokens = len(greedy) == len(target) and all(int(g) == int(t) for g, t in zip(greedy, target))
    return all_tokens or exact_match(predicted_text, target_text)


def ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray | None = None) -> float:
    """Σ numerator / Σ denominator, or the mean of ``numerator`` when there is no denominator.

    accuracy = Σ correct / n; token-mean CE = Σ nll / Σ tokens (docs/method.md §6.3, §6.4: the
    original's ``CrossEntropyLoss`` over the concatenated tokens of a batch). NaN when empty.
    """
    numerator = np.asarray(numerator, dtype=np.float64)
    if denominator is None:
        return float(numerator.mean()) if numerator.size else float("nan")
    total = float(np.asarray(denominator, dtype=np.float64).sum())
    return float(numerator.sum() / total) if total > 0 else float("nan")


def rank_mean_ratio(numerator: np.ndarray, denominator: np.ndarray, ranks: np.ndarray) -> float:
    """The original code's logged value in parity mode (docs/method.md §6.0): each DDP rank computes
    its own Σ nll / Σ tokens on its first batch and ``sync_dist`` averages the ranks:
    mean_r (Σ_{i∈r} nll_i / Σ_{i∈r} tokens_i). Equal to :func:`ratio_of_sums` for one rank."""
    ranks = np.asarray(ranks)
    values = [ratio_of_sums(np.asarray(numerator)[ranks == r], np.asarray(denominator)[ranks == r])
              for r in np.unique(ranks)]
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def mean_of(values: Sequence[float]) -> float:
    """Plain mean of per-task values (the §2.8 aggregates); NaN when empty or when any value is NaN."""
    values = [float(v) for v in values]
    return float(np.mean(values)) if values else float("nan")
