"""Every subcommand's --help reads like a manual: a description, examples, a docs pointer and a
help text for every option (with its default where it has one)."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from lfads_lightning.cli.main import build_parser, main


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub.prog, sub
                yield from _subcommands(sub)


COMMANDS = dict(_subcommands(build_parser()))


def test_the_commands_are_all_there():
    assert {"lfads fit", "lfads pbt", "lfads pbt status", "lfads pbt stop", "lfads search stop",
            "lfads search", "lfads sample",
            "lfads evaluate", "lfads data synth", "lfads data nlb", "lfads ui"} <= set(COMMANDS)  # fmt: skip


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_help_has_description_examples_and_option_help(prog):
    parser = COMMANDS[prog]
    assert parser.description, f"{prog}: no description"
    assert "examples:" in (parser.epilog or ""), f"{prog}: no examples"
    assert "see docs/" in parser.epilog or "see README" in parser.epilog, f"{prog}: no doc pointer"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{prog}: {action.option_strings or action.dest} has no help text"
    text = parser.format_help()
    for action in parser._actions:
        shown = action.help is not argparse.SUPPRESS and not isinstance(action.default, list)
        real = action.default is not None and action.default is not False
        if shown and real and action.option_strings and action.default != argparse.SUPPRESS:
            assert "default" in parser._get_formatter()._get_help_string(action), (
                f"{prog}: {action.option_strings} does not show its default"
            )
    assert "usage:" in text


def test_tracking_uri_precedence_is_worded_the_same_everywhere():
    texts = {
        prog: a.help
        for prog, p in COMMANDS.items()
        for a in p._actions
        if "--tracking-uri" in a.option_strings and prog != "lfads worker"
    }
    assert len(texts) >= 7
    for prog, text in texts.items():
        assert text.startswith("MLflow tracking URI. Used: --tracking-uri, else "), prog
        assert text.endswith("$MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db"), prog


def test_pbt_status_help_is_its_own():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["pbt", "status", "--help"])
    assert out.getvalue().startswith("usage: lfads pbt status")
    assert "PARENT_RUN_ID" in out.getvalue() and "--dry-run" not in out.getvalue()
    assert "pbt-status" not in build_parser().format_help()  # the routing name stays hidden


@pytest.mark.parametrize("kind", ["pbt", "search"])
def test_stop_help_is_its_own(kind):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([kind, "stop", "--help"])
    assert out.getvalue().startswith(f"usage: lfads {kind} stop")
    assert "PARENT_RUN_ID" in out.getvalue() and "--wait" in out.getvalue()
    assert f"{kind}-stop" not in build_parser().format_help()  # the routing name stays hidden
