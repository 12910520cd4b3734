"""`unmemorize plant`: the memorization lab — plant member sequences at known exposure counts.

Recipe: the flags are a :class:`~unmemorize.lab.plant.PlantSpec`; the work is
:func:`unmemorize.lab.plant.plant_run`; a table of exposures is printed.
"""

from __future__ import annotations

from pathlib import Path

import typer

from unmemorize.commands import flags
from unmemorize.commands.common import console, log, progress_bar
from unmemorize.lab.plant import PlantSpec

OUT = flags.extra_option("out", Path, ..., "--out", "-o", help="Folder for the planted model (a Hugging Face model folder).")


def plant_command(spec: PlantSpec, out: Path) -> None:
    """Fine-tune a copy of the model so each member is memorized to its own degree (cached by inputs)."""
    from collections import Counter

    import pandas as pd

    from unmemorize.lab.plant import plant_run
    from unmemorize.report.console import print_frame

    with progress_bar() as p:
        folder, manifest = plant_run(spec, out, log=log, progress=p)
    counts = Counter(manifest["exposure"].values())
    print_frame(console, pd.DataFrame({"exposure": sorted(counts), "sequences": [counts[e] for e in sorted(counts)]}),
                "Planted")
    console.print(f"Planted model: [bold]{folder}[/] ({manifest['steps']} steps); use it with --model {folder}")
    if manifest.get("oracle"):
        o = manifest["oracle"]
        console.print(f"Retrain oracle: [bold]{o['path']}[/] (planted without the {len(o['forget'])} forget members; "
                      f"{len(o['retain'])} retain members in both): judge unlearning with --oracle {o['path']}")


def register(app: typer.Typer) -> None:
    app.command("plant", help=plant_command.__doc__)(flags.command(plant_command, PlantSpec, extra=(OUT,)))
