"""Slow, obviously correct references for the metrics, for tests and benchmarks.

Each one does literally what the definition (or the original code) says, one prefix (or one
bootstrap replicate) at a time, so that the fast implementations in :mod:`unmemorize.memorization`
and :mod:`unmemorize.stats` can be checked for exact equality.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unmemorize.memorization import overlap


@torch.no_grad()
def greedy_reference(model, prefix: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy decoding by full recomputation at every step, batch 1, no cache, no padding, no eos stop."""
    ids = prefix[None, :].clone()
    out = []
    for _ in range(new_tokens):
        nxt = model(input_ids=ids).logits[0, -1].argmax(-1)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return out


@torch.no_grad()
def memorization_accuracy_reference(model, x: torch.Tensor) -> float:
    """The original code's loop: one-token greedy generation from every prefix x[:t] (docs/method.md §2.2)."""
    L = len(x)
    if L < 2:
        return math.nan
    hits = sum(greedy_reference(model, x[:t], 1)[0] == int(x[t]) for t in range(1, L))
    return hits / (L - 1)


@torch.no_grad()
def extraction_likelihood_reference(model, x: torch.Tensor, n: int = 10) -> float:
    """Jang et al.'s loop: decode greedily from every prefix to full length, average the n-gram overlap."""
    L = len(x)
    if L < n + 1:
        return math.nan
    xs = x.tolist()
    total = 0.0
    for i in range(1, L - n + 1):
        total += overlap(greedy_reference(model, x[:i], L - i), xs[i:], n)
    return total / (L - n)


@torch.no_grad()
def jang_extraction_likelihood(model, input_ids: torch.Tensor, n: int = 10) -> list[float]:
    """Jang et al.'s loop as the original code runs it: for each prefix length i, one batched
    ``generate`` over all sequences (all of full length T, no padding), KV-cached, greedy.

    Used as the timing baseline in benchmarks; the per-sequence values equal the reference above.
    """
    from transformers import GenerationConfig

    B, T = input_ids.shape
    cfg = GenerationConfig(do_sample=False, max_length=T, min_length=0, eos_token_id=None,
                           pad_token_id=model.config.eos_token_id if model.config.eos_token_id is not None else 0)
    totals = [0.0] * B
    for i in range(T - 1, 0, -1):
        if T - i < n:
            continue
        prompt = input_ids[:, :i]
        pred = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=cfg)[:, i:]
        for b in range(B):
            totals[b] += overlap(pred[b].tolist(), input_ids[b, i:].tolist(), n)
    return [t / (T - n) for t in totals]


@torch.no_grad()
def memorization_accuracy_generate_loop(model, input_ids: torch.Tensor, full_logits: bool = False) -> list[float]:
    """The original code's MA loop, batched over sequences as it runs: ``generate`` one token from
    every prefix length (docs/method.md §2.2). Timing baseline for benchmarks.

    Today's ``generate`` computes the logits of the last prompt position only; the transformers of
    the original code (4.x, before ``logits_to_keep``) computed them for every prompt position.
    ``full_logits=True`` restores that cost (same values).
    """
    from transformers import GenerationConfig

    extra = {"logits_to_keep": 0} if full_logits else {}  # 0 = keep every position

    B, T = input_ids.shape
    hits = torch.zeros(B)
    for i in range(1, T):
        cfg = GenerationConfig(do_sample=False, max_length=i + 1, eos_token_id=None,
                               pad_token_id=model.config.eos_token_id if model.config.eos_token_id is not None else 0)
        prompt = input_ids[:, :i]
        pred = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=cfg, **extra)[:, -1]
        hits += (pred == input_ids[:, i]).float()
    return (hits / (T - 1)).tolist()


def roc_metrics_reference(members: np.ndarray, nonmembers: np.ndarray, fprs) -> list[float]:
    """[AUC, TPR@α …] the original scoring's way: scikit-learn's full ROC curve (every threshold kept),
    trapezoid AUC, TPR@α = max{tpr_i : fpr_i ≤ α + 1e-12}. NaN-free 1-D inputs, both classes present."""
    from sklearn.metrics import auc, roc_curve

    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    fpr, tpr, _ = roc_curve(labels, np.r_[members, nonmembers], drop_intermediate=False)
    return [float(auc(fpr, tpr)), *(float(tpr[fpr <= a + 1e-12].max()) for a in fprs)]


def roc_replicates_reference(members, nonmembers, fprs=(), bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """The original scoring's stratified bootstrap loop: per replicate, resample members then
    non-members with replacement and build a whole ROC curve. [B, 1 + len(fprs)]; timing baseline."""
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    rng = np.random.default_rng(seed)
    boot = np.empty((bootstrap, 1 + len(fprs)))
    for b in range(bootstrap):
        bm = m[rng.integers(0, len(m), len(m))]
        bn = n[rng.integers(0, len(n), len(n))]
        boot[b] = roc_metrics_reference(bm, bn, fprs)
    return boot


def evaluate_reference(member_scores, nonmember_scores, fprs=(0.01, 0.001), bootstrap: int = 1000,
                       confidence: float = 0.95, seed: int = 0):
    """The original :func:`unmemorize.attacks.scoring.evaluate`, one ``roc_curve`` per bootstrap
    replicate: the same :class:`~unmemorize.attacks.scoring.Evaluation`, slowly."""
    from unmemorize.attacks.scoring import NO_BOOTSTRAP_MARGIN, Evaluation, Interval, resolvable_fprs, roc

    m = np.asarray(member_scores, dtype=float)
    n = np.asarray(nonmember_scores, dtype=float)
    m_ok, n_ok = m[~np.isnan(m)], n[~np.isnan(n)]
    ok_fprs, unresolved = resolvable_fprs(tuple(fprs), len(n_ok))
    if len(m_ok) == 0 or len(n_ok) == 0:
        nan = Interval(math.nan, math.nan, math.nan)
        return Evaluation(nan, {}, tuple(fprs), len(m_ok), len(n_ok), len(m) - len(m_ok), len(n) - len(n_ok),
                          False, np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    point_auc, *point_tprs = roc_metrics_reference(m_ok, n_ok, ok_fprs)
    fpr_c, tpr_c = roc(np.r_[np.ones(len(m_ok)), np.zeros(len(n_ok))], np.r_[m_ok, n_ok])
    boot = roc_replicates_reference(m_ok, n_ok, ok_fprs, bootstrap, seed)
    q = (1 - confidence) / 2

    def interval(col: int, value: float) -> Interval:
        if bootstrap == 0:
            return Interval(value, math.nan, math.nan)
        lo, hi = np.quantile(boot[:, col], [q, 1 - q])
        return Interval(value, float(lo), float(hi))

    auc_iv = interval(0, point_auc)
    return Evaluation(
        auc=auc_iv,
        tpr={a: interval(1 + i, point_tprs[i]) for i, a in enumerate(ok_fprs)},
        unresolved_fprs=unresolved,
        n_members=len(m_ok), n_nonmembers=len(n_ok),
        nan_members=len(m) - len(m_ok), nan_nonmembers=len(n) - len(n_ok),
        below_chance=bool(auc_iv.high < 0.5) if bootstrap else point_auc <= 0.5 - NO_BOOTSTRAP_MARGIN,
        fpr_curve=fpr_c, tpr_curve=tpr_c,
    )


# ---------------------------------------------------------------- MIAU's lm refill, one token per step


def __getattr__(name: str):
    """``TokenByTokenRefill`` is made on first use: it subclasses the attacks' CausalRefill, and importing
    the attacks package here would make every user of these references pay for it."""
    if name == "TokenByTokenRefill":
        cls = _token_by_token_refill()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _token_by_token_refill():
    from unmemorize.attacks.perturb import CausalRefill

    class TokenByTokenRefill(CausalRefill):
        """MIAU's lm refill as it was first written: every row feeds one token per model step (the fixed
        text too), with a growing KV cache, all maskings of a chunk of texts in one batch. The prefilled
        :class:`~unmemorize.attacks.perturb.CausalRefill` must sample from the same distributions (tests) and
        is timed against this (benchmarks/bench_attacks.py). Same settings, same cache key."""

        def neighbours_many(self, texts, k, seed, done=None, first=None):
            out: list[list[str]] = []
            per = max(1, self.max_rows // max(k, 1))
            for c in range(0, len(texts), per):
                chunk = texts[c:c + per]
                starts = first[c:c + per] if first else [0] * len(chunk)
                planned = [self.masks(t, k, seed) for t in chunk]
                rows = [m for (_, ms), s in zip(planned, starts) for m in ms[s:]]
                seeds = [base + j for (base, ms), s in zip(planned, starts) for j in range(s, len(ms))]
                fills = self._fill_rows(rows, seeds)
                at = 0
                for (_, ms), s in zip(planned, starts):
                    mine = ms[s:]
                    self.spans += sum(len(m.originals) for m in mine)
                    out.append([m.assemble(f) for m, f in zip(mine, fills[at:at + len(mine)])])
                    at += len(mine)
                if done:
                    done(len(chunk))
            return out

        @torch.no_grad()
        def _fill_rows(self, masks, seeds):
            from unmemorize.attacks.perturb import _normalise_fill, draw_tokens, sampling_probabilities

            tok, model = self.tokenizer, self.model
            device = next(model.parameters()).device
            context = self.context
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            cap, start = self.cap, self.start
            # plan per row: [fixed_0 ids, span 0, fixed_1 ids, span 1, …]; the text after the last span is not needed
            plans = []
            for m in masks:
                plan: list = []
                for i, n in enumerate(m.words):
                    plan.append(tok(m.fixed[i], add_special_tokens=False)["input_ids"])
                    plan.append(n)
                plans.append(plan)
            K = len(masks)
            seg, pos = [0] * K, [0] * K
            current: list[list[int]] = [[] for _ in range(K)]
            fills: list[list[str]] = [[] for _ in range(K)]
            draws = [0] * K
            done = [not p for p in plans]

            def advance(r, draw):
                """The token row r feeds next; inside a span it draws a sample (once) from row r's generator."""
                while seg[r] < len(plans[r]):
                    step = plans[r][seg[r]]
                    if isinstance(step, list):
                        if pos[r] < len(step):
                            pos[r] += 1
                            return step[pos[r] - 1]
                    else:
                        cur = current[r]
                        sampled = draw()
                        if len(cur) < cap and len(tok.decode(cur + [sampled]).split()) <= step:
                            cur.append(sampled)
                            return sampled
                        fills[r].append(_normalise_fill(tok.decode(cur)))
                        current[r] = []
                    seg[r] += 1
                    pos[r] = 0
                done[r] = True
                return start

            def drawer(r, probs, logits):
                box: list[int] = []

                def get() -> int:  # drawn at the first look only (a span may look at the same sample twice)
                    if not box:
                        box.append(draw_tokens(probs[r:r + 1], [gens[r]])[0])
                        if self.trace is not None:
                            self.trace[(seeds[r], draws[r])] = logits[r].detach().to("cpu", torch.float64).clone()
                        draws[r] += 1
                    return box[0]

                return get

            inp = torch.full((K, 1), start, dtype=torch.long)
            past, fed = None, 0
            while not all(done):
                if context is not None and fed >= context:
                    # the next token would sit at position `context`, past the model's last one
                    for r in range(K):
                        if not done[r]:
                            if seg[r] < len(plans[r]) and not isinstance(plans[r][seg[r]], list):
                                fills[r].append(_normalise_fill(tok.decode(current[r])))
                            kept = masks[r].originals[len(fills[r]):]
                            self.fallback_spans += len(kept)
                            fills[r].extend(_normalise_fill(o) for o in kept)
                    break
                fed += 1
                out = model(input_ids=inp.to(device), attention_mask=torch.ones(K, fed, dtype=torch.long, device=device),
                            cache=past, use_cache=True)
                past = out.cache
                logits = out.logits[:, -1]
                probs = sampling_probabilities(logits, self.temperature, self.banned, self.top_k)
                # a row draws from its own generator, and only inside a span, so its draws depend on
                # nothing but its own text, masking and seed
                nxt = [start if done[r] else advance(r, drawer(r, probs, logits)) for r in range(K)]
                inp = torch.tensor(nxt, dtype=torch.long)[:, None]
            return fills

    TokenByTokenRefill.__module__ = __name__
    TokenByTokenRefill.__qualname__ = "TokenByTokenRefill"
    return TokenByTokenRefill


# ---------------------------------------------------------------- MIAU's lm-independent refill, one draw per pass


@torch.no_grad()
def independent_span_reference(refill, text: str, k: int, seed: int) -> list[str]:
    """The K neighbours of ``text`` that :class:`~unmemorize.attacks.span_refill.IndependentSpanRefill`
    ``refill`` must make, drawn literally: for each masking and each span, every sample from a full pass
    (no cache) over ``[start] + the original's tokens before the span + the span's samples so far``,
    with the span's own generator, the same sampler and the same span rule. Logits go to
    ``refill.trace`` when it is a dict."""
    from unmemorize.attacks.perturb import _normalise_fill, draw_tokens, sampling_probabilities
    from unmemorize.attacks.span_refill import span_contexts, span_seed

    tok, model = refill.tokenizer, refill.model
    device = next(model.parameters()).device
    limit = refill.context if refill.context is not None else 1 << 30
    base, masks = refill.masks(text, k, seed)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    stream = [refill.start] + list(enc["input_ids"])
    contexts = span_contexts(masks, [e for _, e in enc["offset_mapping"]])
    out = []
    for j, (m, lengths) in enumerate(zip(masks, contexts)):
        fills = []
        for i, (n, words) in enumerate(zip(lengths, m.words)):
            if n > limit:
                fills.append(_normalise_fill(m.originals[i]))
                continue
            s_seed = span_seed(base + j, i)
            gen = torch.Generator().manual_seed(s_seed)
            cur: list[int] = []
            draws = 0
            while True:
                ids = torch.tensor([stream[:n] + cur], device=device)
                logits = model(input_ids=ids).logits[:, -1]
                if refill.trace is not None:
                    refill.trace[(s_seed, draws)] = logits[0].detach().to("cpu", torch.float64).clone()
                draws += 1
                t = draw_tokens(sampling_probabilities(logits, refill.temperature, refill.banned, refill.top_k),
                                [gen])[0]
                if len(cur) < refill.cap and len(tok.decode(cur + [t]).split()) <= words:
                    cur.append(t)
                    if n + len(cur) <= limit:
                        continue
                break
            fills.append(_normalise_fill(tok.decode(cur)))
        out.append(m.assemble(fills))
    return out
