"""Options and helpers shared by the subcommands."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import Field, fields

from ..config import PRESETS, SmoothingConfig, default_preset, preset
from ..errors import AmsmoothError
from ..prompts import PromptCase, check_prompt, read_prompts_file


def add_encoder_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--encoder", required=required, metavar="SRC",
                   help="text encoder: Hugging Face id, diffusers pipeline folder, model folder, 'minilm' (the offline "
                        "pretrained MiniLM), 'lab' (MiniLM at 32 tokens, the lab model's), 'tiny' (random tiny CLIP), "
                        "or an SDXL/SD3/Flux pipeline "
                        "(tiny-sdxl, tiny-sd3, tiny-flux, or a folder): relevance scores all its encoders, other "
                        "commands take one, SRC:NAME (e.g. tiny-sd3:t5; default the first)")
    p.add_argument("--max-length", type=int, default=None, help="sequence length for non-CLIP encoders (77)")


def add_concept_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concept", action="append", default=None, metavar="NAME|FILE",
                   help="nudity, violence, vangogh or a saved .safetensors concept; repeat for several "
                        "(relevance = max); default: the preset's concepts")


def smoothing_fields(with_n: bool = True) -> tuple[Field, ...]:
    """The SmoothingConfig fields that are command-line flags (those with a "cli" help text), in field order."""
    return tuple(f for f in fields(SmoothingConfig) if "cli" in f.metadata and (with_n or f.name != "n"))


def smoothing_flag(f: Field) -> str:
    """``--sigma0``, ``--sigma-unit``, …, ``--global`` (a field may name its flag)."""
    return "--" + f.metadata.get("flag", f.name.replace("_", "-"))


# Every option that configures AMS (dest names): commands that have no AMS refuse them rather than ignore them.
SMOOTHING_OPTIONS = ("preset", *(f.name for f in smoothing_fields()))


def add_smoothing_args(p: argparse.ArgumentParser, with_n: bool = True) -> None:
    """--preset and one flag per SmoothingConfig field with a "cli" help text; ``with_n=False`` leaves ``--n``
    free for a subcommand's own sample count. Every flag defaults to None (= the preset's value, else the
    field's default), so a flag the user did not give never overrides a preset."""
    p.add_argument("--preset", choices=sorted(PRESETS), help="the paper's settings (Appendix D), or the lab's "
                   "(lab-nudity: the default with --model/--encoder lab)")
    for f in smoothing_fields(with_n):
        default = ("on" if f.default else "off") if isinstance(f.default, bool) else f.default
        help_text = f"{f.metadata['cli']} (default {default})"
        if isinstance(f.default, bool):
            p.add_argument(smoothing_flag(f), dest=f.name, action="store_true", default=None, help=help_text)
        else:
            p.add_argument(smoothing_flag(f), dest=f.name, type=type(f.default), choices=f.metadata.get("choices"),
                           help=help_text)


def smoothing_config(args: argparse.Namespace) -> SmoothingConfig:
    """Preset (if any), then explicit flags; flags map one-to-one onto SmoothingConfig fields."""
    name = getattr(args, "preset", None) or default_preset(getattr(args, "model", None),
                                                            getattr(args, "encoder", None))
    base = preset(name) if name else SmoothingConfig()
    changes = {f.name: getattr(args, f.name) for f in smoothing_fields() if getattr(args, f.name, None) is not None}
    concepts = getattr(args, "concept", None)
    if concepts:
        changes["concepts"] = tuple(concepts)
    elif not base.concepts:
        changes["concepts"] = ("nudity",)
    return base.replace(**changes)


def smoothing_flags_text(extra: tuple[str, ...] = ()) -> str:
    """'--preset/--sigma0/…' for error messages."""
    return "/".join(["--preset", *(smoothing_flag(f) for f in smoothing_fields()), *extra])


SAFREE_OPTIONS = ("safree_alpha", "safree_svf", "safree_negative", "safree_lra", "safree_keywords")


def add_safree_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options of --defense safree (defaults: the reference's; docs/baselines.md). Its keywords come from
    --concept (nudity, violence, vangogh) or --safree-keywords FILE."""
    p.add_argument("--safree-alpha", type=float, metavar="A", help="SAFREE: trigger-token margin (default 0.01)")
    p.add_argument("--safree-svf", choices=("auto", "on", "off"),
                   help="SAFREE: self-validating filtering (default auto: on for SD 1.x, off for SDXL/SD3/Flux, as "
                        "the reference)")
    p.add_argument("--safree-negative", choices=("auto", "on", "off"),
                   help="SAFREE: the keywords as negative prompt when none is given (default auto: on where the "
                        "model has classifier-free guidance)")
    p.add_argument("--safree-lra", action="store_true", default=None,
                   help="SAFREE: latent re-attention (Fourier filtering of U-Net skip features; SD 1.x/SDXL; off by "
                        "default, see docs/baselines.md)")
    p.add_argument("--safree-keywords", metavar="FILE", help="SAFREE: keyword list (one a line) instead of the "
                                                              "concept's built-in one")


def safree_config(args: argparse.Namespace):  # noqa: ANN201 - amsmooth.baselines.safree.SafreeConfig
    """SafreeConfig of the --safree-* flags and --concept (built-in keyword lists); None when no flag is given
    and the concept is the default (the DefenseSpec then takes the reference's settings)."""
    from ..baselines.safree import SafreeConfig

    changes = {name: getattr(args, f"safree_{name}") for name in ("alpha", "svf", "negative", "lra")
               if getattr(args, f"safree_{name}", None) is not None}
    if getattr(args, "safree_keywords", None):
        changes["keywords_file"] = args.safree_keywords
    concepts = tuple(getattr(args, "concept", None) or ("nudity",))
    if args.safree_keywords and getattr(args, "concept", None) is None:
        concepts = ()
    return SafreeConfig(concepts=concepts, **changes)


def load_concepts(specs: Sequence[str], encoder) -> list:  # noqa: ANN001
    from ..concepts import resolve_concept

    return [resolve_concept(s, encoder) for s in specs]


def collect_prompts(positional: Sequence[str] | None, prompts_file: str | None,
                    allow_empty: bool = False) -> list[PromptCase]:
    """Prompts from the command line and/or a file (text: one a line; CSV: the data contract). An empty PROMPT
    argument is refused unless ``allow_empty`` (relevance and certify: it is analysed, not drawn)."""
    cases = [PromptCase(str(i), p) for i, p in enumerate(positional or [])]
    for c in cases if not allow_empty else []:
        check_prompt(c.prompt, f"PROMPT argument {int(c.case_number) + 1}")
    if prompts_file:
        from_file = read_prompts_file(prompts_file)
        clash = sorted({c.case_number for c in cases} & {c.case_number for c in from_file}, key=len)
        if clash:
            raise AmsmoothError(f"PROMPT arguments are numbered 0..{len(cases) - 1} and {prompts_file} also has "
                                f"case {clash[0]!r}: their images would overwrite each other; give the prompts "
                                "either as arguments or in the file")
        cases += from_file
    if not cases:
        raise AmsmoothError("no prompts: give PROMPT arguments or --prompts-file FILE")
    return cases
