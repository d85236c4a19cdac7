"""``amsmooth relevance --encoder tiny-flux|SDXL/SD3/Flux folder``: every encoder's scores and the combined one."""
from __future__ import annotations

import json


def format_words(result: dict, names: list[str]) -> str:
    """Per word: each encoder's best own score and the combined score (what σ uses)."""
    lines = [f"prompt: {result['prompt']}"]
    if result.get("dropped"):
        lines.append(f"  (truncated; dropped: {result['dropped']})")
    head = "".join(f"{n:>9}" for n in names)
    lines.append(f"  {'word':<18}{head} {'combined':>9}")
    for w in result["words"]:
        cells = "".join(f"{w['sims'][n]:>9.3f}" if n in w["sims"] else f"{'-':>9}" for n in names)
        lines.append(f"  {w['word'][:18]:<18}{cells} {w['sim']:>9.3f}")
    for n in names:
        lines.append(f"  encoder {n}:")
        lines.append(f"    {'pos':>4}  {'token':<16} {'word':<16} {'own':>7} {'sim':>7} {'sigma':>9}")
        for t in result["encoders"][n]:
            lines.append(f"    {t['position']:>4}  {t['token'][:16]:<16} {t['word'][:16]:<16} {t['sim_own']:>7.3f} "
                         f"{t['sim']:>7.3f} {t['sigma']:>9.5f}")
    if not result["words"]:
        lines.append("  (empty prompt: nothing to score, no noise)")
    return "\n".join(lines)


def run_family(args, cases, config) -> int:  # noqa: ANN001 - argparse namespace, PromptCase list, SmoothingConfig
    """Score with every text encoder of a multi-encoder family and print per-encoder and combined scores."""
    from ..models.load import load_family_views
    from ..pipelines.defense import FamilyDefense

    views = load_family_views(args.encoder)
    defense = FamilyDefense.build(views, list(config.concepts), config)
    results = defense.report(defense.plan([c.prompt for c in cases]))
    if args.format == "jsonl":
        for r in results:
            print(json.dumps({k: r[k] for k in ("prompt", "words", "encoders")}, ensure_ascii=False))
        return 0
    print(f"concepts: {', '.join(config.concepts)}   σ0={config.sigma0} k={config.k}   encoders: "
          f"{', '.join(defense.names)}   combined = max over encoders, per word")
    print("\n\n".join(format_words(r, defense.names) for r in results))
    return 0
