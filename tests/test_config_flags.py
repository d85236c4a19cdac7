"""Command flags derived from the config dataclasses: each flag reaches its config field, its help shows the
dataclass's default (written once, there), and a flag applies exactly to the attacks whose config has it."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import get_args

import pytest

from amsmooth.attacks import ATTACKS, RingABell, RingABellConfig, SearchConfig
from amsmooth.attacks.objective import LOSSES, Loss
from amsmooth.attacks.p4d import VARIANTS, Variant
from amsmooth.cli import attack as attack_cli
from amsmooth.cli.config_flags import argparse_kwargs, default_text, flag_fields
from amsmooth.cli.main import build_parser
from amsmooth.errors import AmsmoothError

# Flags of `amsmooth attack` that are not attack config fields (inputs, the budget label, the defense).
NOT_CONFIG = {"help", "encoder", "max_length", "model", "unet", "target_images", "device", "concept", "prompts",
              "limit", "out", "seed", "no_progress", "budget", "clip", "adaptive", "preset", "sigma0", "sigma_unit",
              "k", "n", "relevance", "use_global", "noise_special_tokens", "attack"}
# (attack, field) whose every other value the config refuses on its own (QF appends, MMA replaces; QF's targeted
# objective needs a phrase and sentences): the round trip gives the default there.
ONLY_DEFAULT = {("qf", "mode"), ("mma", "mode"), ("qf", "objective")}


def _parser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser([command])._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _candidates(config: type, name: str, flag: str) -> list[tuple[list[str], object]]:
    """(argv, the value it means) to try for a field: other values than the default first, the default last."""
    kw, default = argparse_kwargs(config, name), config.__dataclass_fields__[name].default
    if kw.get("action") == "store_const":
        return [([flag], kw["const"])]
    if kw.get("action") == "append":
        return [([flag, "a cat on a sofa", flag, "a cat in the rain"], ("a cat on a sofa", "a cat in the rain"))]
    if "choices" in kw:
        return [([flag, c], c) for c in kw["choices"] if c != default] + [([flag, str(default)], default)]
    if kw.get("type") is int:
        return [([flag, str((default or 0) + 8)], (default or 0) + 8)]
    if kw.get("type") is float:
        value = default / 2 if default else 0.5
        return [([flag, str(value)], value)]
    return [([flag, "a dog in the snow"], "a dog in the snow")]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_config_flag_reaches_its_config_field(attack):
    """Flag → config value, for every field of every attack config that is a flag."""
    config, parser, seen_default = ATTACKS[attack].config_class, _parser("attack"), set()
    flags = attack_cli.attack_flags()
    assert {f.name for f in flag_fields(config)} <= set(flags)
    for f in flag_fields(config):
        flag = flags[f.name]
        assert attack in flag.attacks
        for argv, value in _candidates(config, f.name, flag.name):
            args = parser.parse_args([attack, "--prompts", "p.csv", "--out", "o.csv", *argv])
            try:
                built = attack_cli.attack_config(args, ATTACKS[attack])
            except AmsmoothError:
                continue                                   # a value this attack refuses: try the next
            assert getattr(built, f.name) == value, (attack, argv)
            if getattr(built, f.name) == f.default:
                seen_default.add((attack, f.name))
            break
        else:
            pytest.fail(f"{attack} {flag.name}: no value accepted")
    assert seen_default <= ONLY_DEFAULT, seen_default


def test_a_flag_applies_to_the_attacks_whose_config_has_it():
    flags, parser = attack_cli.attack_flags(), _parser("attack")
    for dest, flag in flags.items():
        having = tuple(a for a, cls in ATTACKS.items() if dest in {f.name for f in flag_fields(cls.config_class)})
        assert flag.attacks == having
        for other in (a for a in ATTACKS if a not in having):
            argv = _candidates(ATTACKS[having[0]].config_class, dest, flag.name)[0][0]
            args = parser.parse_args([other, "--prompts", "p.csv", "--out", "o.csv", *argv])
            with pytest.raises(AmsmoothError, match=f"{flag.name} applies to .* only, not '{other}'"):
                attack_cli.attack_config(args, ATTACKS[other])


def test_help_shows_each_attacks_dataclass_default():
    """Each flag's help names every attack it applies to with that attack's config default (and a number default
    as the dataclass holds it), so a default written by hand again would be a second source the test catches."""
    helps = {a.dest: a.help for a in _parser("attack")._actions}
    for dest, flag in attack_cli.attack_flags().items():
        shown = helps[dest].replace("%%", "%")
        for attack in flag.attacks:
            config = ATTACKS[attack].config_class
            text, value = default_text(config, dest), config.__dataclass_fields__[dest].default
            if text is not None:
                assert text in shown, (dest, attack, shown)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert f"{value:g}" in shown, (dest, attack, shown)
            if len(flag.attacks) < len(ATTACKS):
                assert attack in shown


def test_every_config_field_of_the_parser_is_derived():
    """No hand-written flag for a config field: every option whose dest is an attack config field is the one
    derived from the configs (same help), and each derived flag is in the parser once."""
    config_fields = {f.name for cls in ATTACKS.values() for f in fields(cls.config_class)}
    derived = attack_cli.attack_flags()
    actions = [a for a in _parser("attack")._actions if a.dest not in NOT_CONFIG]
    assert sorted(a.dest for a in actions) == sorted(derived)
    for a in actions:
        assert a.dest in config_fields and a.help == derived[a.dest].kwargs["help"]
        assert a.option_strings == [derived[a.dest].name] and a.default is None


def test_the_help_follows_a_changed_default(monkeypatch):
    """A config with another default shows it in the help, and its flag reaches it (nothing repeats it)."""
    @dataclass(frozen=True)
    class Wider(RingABellConfig):
        population: int = 4242

    class Fake(RingABell):
        name, config_class = "fake", Wider

    monkeypatch.setitem(ATTACKS, "fake", Fake)
    attack_cli.attack_flags.cache_clear()
    try:
        helps = {a.dest: a.help for a in _parser("attack")._actions}
        assert "fake: population (default 4242)" in helps["population"]
        assert "rab: population (default 200)" in helps["population"]
        args = _parser("attack").parse_args(["fake", "--prompts", "p", "--out", "o", "--population", "7"])
        assert attack_cli.attack_config(args, Fake).population == 7
    finally:
        attack_cli.attack_flags.cache_clear()


def test_the_special_flags_keep_their_names_and_actions():
    flags = attack_cli.attack_flags()
    assert flags["objective"].name == "--qf-objective"
    assert flags["mask_sentences"].name == "--mask-sentence" and flags["mask_sentences"].kwargs["action"] == "append"
    assert flags["filter_words"].name == "--no-word-filter" and flags["filter_words"].kwargs["const"] is False
    assert flags["elitism"].name == "--elitism" and flags["elitism"].kwargs["const"] is True
    assert {d for d, f in flags.items() if f.group == "adaptive"} == {"eot_samples", "rerank", "rerank_draws"}
    assert "budget" not in flags and {f.name for f in fields(SearchConfig)} - {"budget"} <= set(flags)


def test_budget_help_lists_each_attacks_quick_table():
    help_text = next(a.help for a in _parser("attack")._actions if a.dest == "budget")
    for name, cls in ATTACKS.items():
        assert cls.quick and name in help_text
        for key, value in cls.quick.items():
            assert f"{attack_cli.attack_flags()[key].name} {value}" in help_text


def test_literal_choices_match_the_tables_they_name():
    assert get_args(Loss) == tuple(LOSSES)
    assert get_args(Variant) == tuple(VARIANTS)


# ---------------------------------------------------------------------------------------------- amsmooth unlearn

def _unlearn_settings():
    from amsmooth.unlearn.esd import ESDSettings
    from amsmooth.unlearn.race import RACESettings
    from amsmooth.unlearn.rece import RECESettings
    from amsmooth.unlearn.uce import UCESettings

    return {"esd": ESDSettings, "uce": UCESettings, "rece": RECESettings, "race": RACESettings}


def _unlearn_args(method: str, *flags: str) -> argparse.Namespace:
    return _parser("unlearn").parse_args([method, "--model", "tiny", "--concept", "nudity", "--out", "u.safetensors",
                                          *flags])


@pytest.mark.parametrize("group", ["esd", "uce", "rece", "race"])
def test_every_unlearn_settings_flag_reaches_its_field(group):
    """Flag → settings value for every settings field with a help text (RECE's through `unlearn rece`, whose
    UCE stage takes the UCE flags; RACE's ESD stage takes the ESD flags)."""
    from amsmooth.cli import unlearn as unlearn_cli

    cls = _unlearn_settings()[group]
    mapping = unlearn_cli.setting_flags()[group]
    assert sorted(mapping.values()) == sorted(f.name for f in flag_fields(cls)) and mapping
    for dest, name in mapping.items():
        flag = "--" + dest.replace("_", "-")
        argv, value = _candidates(cls, name, flag)[0]
        settings = unlearn_cli.method_settings(_unlearn_args(group, *argv))
        assert getattr(settings, name) == value, (group, argv)
        if group == "esd" and name != "iterations":     # RACE's ESD stage takes the same flag
            assert getattr(unlearn_cli.method_settings(_unlearn_args("race", *argv)).esd, name) == value
    race = unlearn_cli.method_settings(_unlearn_args("race", "--iterations", "7", "--esd-iterations", "9"))
    assert (race.iterations, race.esd.iterations) == (7, 9)


def test_unlearn_help_shows_each_settings_default():
    from amsmooth.cli import unlearn as unlearn_cli
    from amsmooth.unlearn.esd import QUICK
    from amsmooth.unlearn.race import QUICK_RACE

    helps = {a.dest: a.help.replace("%%", "%") for a in _parser("unlearn")._actions}
    for group, cls in _unlearn_settings().items():
        for dest, name in unlearn_cli.setting_flags()[group].items():
            value = cls.__dataclass_fields__[name].default
            assert f"(default {default_text(cls, name)}" in helps[dest] or name == "iterations", (dest, helps[dest])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert f"default {value:g}" in helps[dest], (dest, helps[dest])
    assert f"race: of the adversarial stage, default {_unlearn_settings()['race']().iterations}" in helps["iterations"]
    assert f"quick: {QUICK_RACE.esd.iterations}" in helps["esd_iterations"]
    assert f"quick: a labelled CPU smoke setting, NOT the reference ({QUICK.iterations} iterations, " \
           f"{QUICK.ddim_steps} DDIM steps" in helps["budget"]


def test_every_unlearn_settings_option_is_derived():
    """No hand-written flag for a settings field: the options are the derived ones plus the inputs (texts, files)."""
    from amsmooth.cli import unlearn as unlearn_cli

    inputs = {"help", "method_name", "model", "unet", "concept", "erase", "out", "overwrite", "device", "seed",
              "no_progress", "budget", "guide", "preserve", "preserve_file", "pretrained_esd", "esd_iterations"}
    derived = [d for g in unlearn_cli.setting_flags().values() for d in g]
    assert sorted(a.dest for a in _parser("unlearn")._actions if a.dest not in inputs) == sorted(derived)
    assert set(unlearn_cli.method_flags()["rece"]) >= set(unlearn_cli.method_flags()["uce"])
