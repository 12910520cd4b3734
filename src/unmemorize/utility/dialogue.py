"""Dialogue prompts and their text normalisation (docs/method.md §6.3).

A dialogue is a list of turns; the model sees every turn but the last, labelled alternately
``User 1:`` / ``User 2:``, and must continue with the last one. Each turn is first normalised the
ParlAI way (``normalize_reply``, version 2), exactly as the original code does, quirks included.
"""

from __future__ import annotations

from collections.abc import Sequence

# (spaced form, tight form): punctuation is spaced out to find sentence boundaries, then tightened.
_SWITCH = ((" .", "."), (" ,", ","), (" ?", "?"), (" !", "!"), (" ' ", "'"))
_CAPITALISED_WORDS = ("i", "i'm", "i've", "i'll", "i'd")


def _upper_first(word: str) -> str:
    return word[:1].upper() + word[1:]


def normalize_reply(text: str) -> str:
    """ParlAI's ``normalize_reply`` (version 2), as the original code applies it to every turn.

    1. lower-case; space out ``. , ? !`` and ``'`` (each replacement followed by one pass that
       turns double spaces into single ones);
    2. split on single spaces; capitalise the first word, the word "i", and the word after any
       token that is a substring of ``"?.!"`` — which, as in the original, includes the empty
       token left by a double space;
    3. tighten the punctuation again, strip, collapse one level of double spaces;
    4. add a final "." unless the text ends in one of ``! . ? ) " '``.
    """
    new = text.lower()
    for spaced, tight in _SWITCH:
        new = new.replace(tight, spaced).replace("  ", " ")
    tokens = new.split(" ")
    for i in range(len(tokens)):
        if i == 0 or tokens[i] in _CAPITALISED_WORDS:
            tokens[i] = _upper_first(tokens[i])
        elif tokens[i] in "?.!" and i < len(tokens) - 1:
            tokens[i + 1] = _upper_first(tokens[i + 1])
    new = " " + " ".join(tokens) + " "
    for spaced, tight in _SWITCH:
        new = new.replace(spaced, tight)
    new = new.strip().replace("  ", " ")
    if new and new[-1] not in "!.?)\"'":
        new += "."
    return new


def dialogue_prompt(history: Sequence[str]) -> str:
    """The prompt for the next turn (docs/method.md §6.3): ``"User 1: {turn}\\n"`` for even indices,
    ``"User 2: {turn}\\n"`` for odd ones, each turn normalised, then the next speaker's label with
    no trailing space: ``"User 1:"`` if the last index was odd, else ``"User 2:"``.

    ``history`` is every turn but the last; it must not be empty.
    """
    if not history:
        raise ValueError("a dialogue needs at least 2 turns (a history and a reply)")
    prompt = "".join(f"User {1 if i % 2 == 0 else 2}: {normalize_reply(turn)}\n" for i, turn in enumerate(history))
    return prompt + ("User 1:" if (len(history) - 1) % 2 else "User 2:")


def dialogue_target(reply: str) -> str:
    """The reply the model must produce: the last turn, normalised, with no leading space (§6.3)."""
    return normalize_reply(reply)


def cut_at_next_turn(generated: str) -> str:
    """Keep the generated reply up to the first ``"\\nUser "`` (the model starting the next turn)."""
    return generated.split("\nUser ")[0]
