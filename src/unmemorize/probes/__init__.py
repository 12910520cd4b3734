"""Robustness probes of an unlearned model: does the forgotten text come back? (docs/method.md §3.8)

* :mod:`.options`   ProbeSettings (``probes:`` in run configs, ``--probes`` on ``unlearn``) and ProbeSpec
* :mod:`.relearn`   a few steps of benign fine-tuning on a copy
* :mod:`.quantize`  8- and 4-bit round-to-nearest weight quantization (pure, CPU)
* :mod:`.prompts`   reworded prefixes and sampling, exact from one teacher-forced pass
* :mod:`.resurface` resurfacing = after − before, and the verdict against the oracle (pure)
* :mod:`.run`       :func:`run_probes` (the library function), the files, ``unmemorize probe``'s work
* :mod:`.summary`   the typed summary (probes.json; the run record's ``probes``)

Nothing heavy is imported here: the run record imports :mod:`.summary`.
"""

from __future__ import annotations

_WHERE = {"GROUPS": "options", "PROBES": "options", "ProbeSettings": "options", "ProbeSpec": "options",
          "ProbesRecord": "summary", "ProbeSummary": "summary", "run_probes": "run", "ProbeResults": "run"}
__all__ = ["GROUPS", "PROBES", "ProbeResults", "ProbeSettings", "ProbeSpec", "ProbeSummary", "ProbesRecord",
           "run_probes"]


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"unmemorize.probes.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'unmemorize.probes' has no attribute {name!r}")
