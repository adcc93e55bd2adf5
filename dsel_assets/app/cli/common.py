"""What every ``dsel`` command shares: the state home, the definitions it runs, argument types,
option groups and help texts, and plain text tables."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from resources import store as state_db
from resources.home import DselHome
from resources.settings import RUNTIME_ENVIRONMENT


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def open_home(args: argparse.Namespace) -> DselHome:
    if args.home:
        os.environ["DSEL_HOME"] = str(Path(args.home).resolve())
    home = DselHome.from_env().ensure()
    home.use_as_dagster_home()
    return home


def definitions_for(
    home: DselHome, args: argparse.Namespace, pin: bool | Collection[str] = True, first_use: dict | None = None
):
    """The code location for this command. Representation settings come from the state home
    (a conflicting ``--model`` / ``--grad-dim`` / ``--pooling`` is an error unless
    ``--change-settings``); ``pin`` names the settings the command computes with, stored on
    first use (read-only commands pin nothing)."""
    return definitions_maker(home, args, pin, first_use)()


def definitions_maker(
    home: DselHome, args: argparse.Namespace, pin: bool | Collection[str] = True, first_use: dict | None = None
):
    """What :func:`definitions_for` builds, as a picklable maker (worker processes build their own)."""
    import functools

    from dsel_assets.core.models.loading import check_model_options, pick_device
    from dsel_assets.pipeline.code_location import build_definitions
    from resources.models import resolve_model
    from resources.settings import runtime_options

    for requested in (
        getattr(args, "model", None) or os.environ.get("DSEL_MODEL"),
        getattr(args, "proxy_model", None) or os.environ.get("DSEL_PROXY_MODEL"),
    ):
        if requested:
            resolve_model(requested)  # a mistyped name fails here, before anything is stored or pinned
    runtime = runtime_options({name: getattr(args, name, None) for name in RUNTIME_ENVIRONMENT})
    check_model_options(  # what this machine cannot run fails before anything is pinned
        pick_device(getattr(args, "device", None) or os.environ.get("DSEL_DEVICE", "auto")),
        getattr(args, "dtype", None) or os.environ.get("DSEL_DTYPE") or "auto",
        runtime.get("attention", "sdpa"),
        getattr(args, "load_in", None) or os.environ.get("DSEL_LOAD_IN") or "none",
    )
    announce_changed_settings(home, args)
    return functools.partial(
        build_definitions,
        home,
        model=getattr(args, "model", None),
        device=getattr(args, "device", None),
        runtime=runtime,
        dtype=getattr(args, "dtype", None),
        load_in=getattr(args, "load_in", None),
        grad_dim=getattr(args, "grad_dim", None),
        projection=getattr(args, "projection", None),
        pooling=getattr(args, "pooling", None),
        proxy_model=getattr(args, "proxy_model", None),
        embed_max_length=getattr(args, "embed_max_length", None),
        embed_bos=None if getattr(args, "embed_bos", None) is None else bool(args.embed_bos),
        sentence_text=getattr(args, "sentence_text", None),
        first_use=first_use,
        change_settings=getattr(args, "change_settings", False),
        strict=True,
        pin=pin,
    )


def settled(make):
    """``make`` for a worker process: the settings are pinned (or changed) by this command already."""
    import functools

    return functools.partial(make.func, *make.args, **{**make.keywords, "pin": False, "change_settings": False})


def announce_changed_settings(home: DselHome, args: argparse.Namespace) -> None:
    """Say which settings this command switches (``--change-settings``), before any work; what
    depends on them is stale from then on (their code versions include them)."""
    from resources.settings import FLAGS, resolve_settings

    requested = {name: getattr(args, name, None) for name in FLAGS}
    _, changed = resolve_settings(home, requested, change=getattr(args, "change_settings", False), pin=False)
    if changed:
        print(
            f"[dsel] changing {', '.join(changed)}: what was computed with it is stale; "
            "commands recompute it for the whole pool"
        )


def register_file(home: DselHome, path: Path, **labels) -> tuple[str, bool]:

    with state_db.open_state(home.duckdb, log=to_stderr) as db:
        manifest, created = db.register_batch(path, home.raw, objects=home.artifacts.objects, **labels)
        validated = db.is_validated(manifest.batch)
    return manifest.batch, created or not validated


def to_stderr(message: str) -> None:
    from dsel_assets.app import output

    output.progress(message, sys.stderr)


def print_ingest_summary(home: DselHome, batches: list[str]) -> None:

    with state_db.open_state(home.duckdb, read_only=True, log=to_stderr) as db:
        rows = []
        for batch in batches:
            accepted, reasons, error = db.batch_counts(batch)
            quarantined = sum(n for _, n in reasons)
            detail = ", ".join(f"{r}={n}" for r, n in reasons) or "-"
            rows.append((batch, accepted + quarantined, accepted, quarantined, f"FAILED: {error}" if error else detail))
    print(format_table(["batch", "read", "accepted", "quarantined", "reasons"], rows))


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    params = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"param: expected key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        params[key.strip()] = value.strip()
    return params


def scoped_params(pairs: list[str] | None, what: str) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` pairs -> {NAME: {KEY: VALUE}} (values parsed as JSON when they are)."""
    out: dict[str, dict] = {}
    for key, value in parse_params(pairs).items():
        name, dot, field = key.partition(".")
        if not dot or not name or not field:
            raise ValueError(f"{what}: expected {what.upper()}.KEY=VALUE, got {key}={value}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[field] = parsed if what == "config" else value
    return out


def check_reading_options(args: argparse.Namespace) -> None:
    """``--layout`` and ``--mapping``, checked before any file is stored or registered."""
    from dsel_assets.core.data.readers import LAYOUTS, FieldMapping

    if args.layout is not None and args.layout not in LAYOUTS:
        raise ValueError(f"layout: {args.layout!r} is not one of {', '.join(LAYOUTS)}")
    FieldMapping.parse(args.mapping)
    if args.layout == "mapped" and args.mapping is None:
        raise ValueError("mapping: --layout mapped needs --mapping prompt=COL,response=COL[,input=COL]")
    if args.mapping is not None and args.layout not in (None, "mapped"):
        raise ValueError(f"mapping: --mapping reads the 'mapped' layout, not {args.layout!r}")


MODEL_HELP = (
    "smollm2 | tiny | local folder or .gguf (hub ids need DSEL_ALLOW_HUB=1); default: the state home's, else smollm2"
)


CHANGE_HELP = "switch the state home's model / gradient dim / pooling / proxy model and recompute what depends on it"


PROXY_HELP = (
    "small proxy model of superfiltering(_d) / small2large (DSEL_PROXY_MODEL), as for --model; "
    "default: the state home's, else the selection model"
)


HOME_HELP = "state directory (default: $DSEL_HOME or ./.dsel)"


PROJECTION_HELP = (
    "gradient projection: rademacher (default) | gaussian (exact per-example gradients, LESS) | factorised "
    "(LoGra style inside the hooks: no per-example gradient is formed; for 1B+ models; approximate Adam)"
)


DEVICE_HELP = "auto (default: CUDA when present, else CPU) | cpu | cuda | cuda:N (the N-th GPU)"


def score_kinds_help() -> str:
    """``dsel score``'s kinds, each with the asset it computes where that is another name, and
    the representations of that asset where it serves others too."""
    from dsel_assets.pipeline.registry import score_kinds, served_by

    labels = []
    for kind, spec in sorted(score_kinds().items()):
        served = served_by(spec.asset)
        details = ([spec.asset] if spec.asset != kind else []) + (
            [", ".join(served)] if set(served) - {kind, spec.asset} else []
        )
        labels.append(f"{kind} ({': '.join(details)})" if details else kind)
    return f"the representation to compute: {', '.join(labels)}"


def model_options(command: argparse.ArgumentParser) -> None:
    """How the models of a command load and run: the device and runtime options (this command
    only), the dtype and quantisation (pinned in the state home: they change what a model computes)."""
    from dsel_assets.core.models.loading import ATTENTIONS, LOAD_IN, MODEL_DTYPES

    command.add_argument("--device", default=None, help=DEVICE_HELP)
    command.add_argument(
        "--dtype", choices=MODEL_DTYPES, default=None, help="weights' dtype (pinned; auto: bf16 on CUDA, else fp32)"
    )
    command.add_argument(
        "--load-in", choices=LOAD_IN, default=None, help="quantise the frozen weights with bitsandbytes (CUDA; pinned)"
    )
    command.add_argument(
        "--attention", choices=ATTENTIONS, default=None, help="attention kernel (default sdpa; $DSEL_ATTENTION)"
    )
    command.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=None,
        help="padded tokens per batch in every model pass ($DSEL_MAX_BATCH_TOKENS; default: no cap)",
    )
    command.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute activations when training (warmup, fine-tuning): less memory, ~20%% more time "
        "($DSEL_GRADIENT_CHECKPOINTING=0|1; default: on)",
    )
