"""Benchmarks: scripts that measure the project and write their sections of ``benchmarks/RESULTS.md``.

Run one as ``.venv/bin/python benchmarks/<name>.py`` (or ``-m benchmarks.<name>``); the shared data
(Jang et al.'s forget sets, the evaluation files) is found through ``UNMEMORIZE_DATA``
(:mod:`benchmarks.common`, docs/data.md).
"""
