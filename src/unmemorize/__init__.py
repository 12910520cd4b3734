"""unmemorize: per-sequence memorization audit and unlearning for causal language models.

Implements Barbulescu & Triantafillou, "To Each (Textual Sequence) Its Own" (ICML 2024):
every sequence to forget is measured and treated by its own degree of memorization.
"""

__version__ = "0.1.0"
