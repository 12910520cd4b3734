"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from unmemorize.errors import UserError

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hugging Face model folder, a .gguf file, or 'default' (SmolLM2-135M).")]
AllowPickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Allow loading pickle weights (.bin/.pt); they can run code.")]
TrustCodeOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model folder's own Python code to run.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="torch device (default: cuda if available, else cpu).")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/<command>-<time>).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory.")]
LengthOpt = Annotated[int, typer.Option("--length", help="Tokens per sequence T (the paper: 200).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]


def default_out(command: str) -> Path:
    return Path("runs") / f"{command}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise UserError(f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}")
    return items


def load_model_cli(spec: str, dtype: str = "float32", device: str | None = None, allow_pickle: bool = False,
                   trust_remote_code: bool = False):
    from unmemorize import distributed
    from unmemorize.models import load_model

    d = distributed.current()
    if d is not None:  # under accelerate launch: each rank on its own device, only rank 0 talks
        device = device or str(d.device)
        if not d.is_main:
            console.quiet = err_console.quiet = True
    with err_console.status(f"loading model {spec} …"):
        return load_model(spec, dtype=dtype, device=device, allow_pickle=allow_pickle,
                          trust_remote_code=trust_remote_code, log=lambda m: err_console.print(f"[cyan]{m}[/]"))


@contextlib.contextmanager
def progress_bar():
    """One live rich progress display for the whole command (on stderr)."""
    from unmemorize.progress import make_progress

    with make_progress(err_console) as p:
        yield p


def frame_table(df, title: str):
    """A DataFrame as a rich table: floats to 3 decimals, NaN as —."""
    import math

    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in df.columns:
        t.add_column(str(c), justify="right")
    for _, r in df.iterrows():
        t.add_row(*["—" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" if isinstance(v, float) else str(v)
                    for v in r.tolist()])
    return t


def check_refill_model(refill_model, names, perturber: str) -> None:
    """A refill model only means something to MIAU's lm perturber; refuse it elsewhere before any work."""
    if refill_model is not None and not ("miau" in names and perturber == "lm"):
        raise UserError("--refill-model is for MIAU's lm perturber: add miau to --attacks and use --perturber lm")
