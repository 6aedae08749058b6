"""`fleet --help` answers from a table without importing the commands: the table must say what they say,
and every command must take the global options after it."""

import pytest
import typer

from reconciler.cli.main import COMMANDS, app


def _commands() -> dict[str, typer.core.TyperGroup]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return {name: group.get_command(typer.Context(group), name) for name in group.list_commands(typer.Context(group))}


def _leaves(command: object) -> list[object]:
    subcommands = getattr(command, "commands", {})
    return [command] + [leaf for sub in subcommands.values() for leaf in _leaves(sub)]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_listed_help_is_the_first_sentence_of_the_command_s_own(name: str) -> None:
    command = _commands()[name]
    assert command is not None and command.help is not None
    assert " ".join(command.help.split()).startswith(COMMANDS[name]), command.help


def test_every_command_and_verb_takes_db_and_data_dir_after_it() -> None:
    missing = [
        f"{name} {getattr(leaf, 'name', '')}"
        for name, command in _commands().items()
        for leaf in _leaves(command)
        if not {"db", "data_dir"} <= {param.name for param in getattr(leaf, "params", [])}
    ]
    assert missing == []


def test_an_unknown_command_gets_the_closest_names() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["gett"])
    assert result.exit_code == 2 and "Did you mean 'get'" in result.output
