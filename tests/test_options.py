"""Options are declared once, on config fields, and the command line is made from them (hskstore.options)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import click
import pytest
from click.testing import CliRunner

from hskstore.cli import cli
from hskstore.configs.bench import BenchConfig
from hskstore.configs.extract import ExtractConfig
from hskstore.configs.finetune import FinetuneConfig
from hskstore.configs.train import TrainConfig
from hskstore.errors import ConfigError
from hskstore.experiments.sweep import SweepConfig
from hskstore.method import strategies
from hskstore.method.compression import Compression
from hskstore.options import Option, as_text, build, click_options, nested, option, specs

CONFIGS = {"finetune": FinetuneConfig, "extract": ExtractConfig, "train": TrainConfig, "bench": BenchConfig,
           "sweep": SweepConfig}
# What each command adds to its config's options: the command line's own switches and arguments.
COMMAND_ONLY = {"finetune": {"quiet", "as_json"}, "extract": {"full", "dry_run", "as_json", "quiet"},
                "train": {"store", "quiet", "as_json"}, "bench": {"store", "as_json"}, "sweep": {"dry_run", "as_json"}}


@dataclass(frozen=True)
class Inner:
    size: int = option(3, "Size.")
    kind: str = option("a", "Kind.", choices=lambda: KINDS)


@dataclass(frozen=True)
class Outer:
    name: str = option(help="Name.")
    inner: Inner = nested(Inner, factory=Inner)
    on: bool = option(True, "Turn it off.", flag="--off", negate=True)
    sizes: tuple[int, ...] = option((1, 2), "Sizes.", parse=lambda text: tuple(int(v) for v in text.split(",")))
    note: str = "not an option"


KINDS = ["a", "b"]


def _command():
    @click.command()
    @click_options(Outer)
    def command(**values):
        click.echo(repr(build(Outer, values)))

    return command


def test_a_field_becomes_an_option_with_its_flag_default_help_and_choices():
    result = CliRunner().invoke(_command(), ["--help"])
    for text in ("--name TEXT", "[required]", "--size INTEGER", "[default: 3]", "--kind [a|b]", "--off",
                 "--sizes TEXT", "[default: 1,2]"):
        assert text in result.output
    assert "--note" not in result.output and "--on " not in result.output


def test_parsed_values_build_the_config_nested_ones_included():
    result = CliRunner().invoke(_command(), ["--name", "x", "--size", "5", "--kind", "b", "--off", "--sizes", "4,5"])
    assert result.output.strip() == repr(Outer(name="x", inner=Inner(size=5, kind="b"), on=False, sizes=(4, 5)))
    defaults = CliRunner().invoke(_command(), ["--name", "x"])
    assert defaults.output.strip() == repr(Outer(name="x"))


def test_choices_are_read_from_their_registry_when_used(monkeypatch):
    monkeypatch.setitem(globals(), "KINDS", ["a", "b", "c"])
    assert "[a|b|c]" in CliRunner().invoke(_command(), ["--help"]).output
    monkeypatch.setitem(strategies.WIDTH, "middle", strategies.WIDTH["uniform"])
    assert "middle" in CliRunner().invoke(cli, ["extract", "--help"]).output


def test_a_value_the_parser_refuses_is_a_usage_error_naming_the_flag():
    result = CliRunner().invoke(_command(), ["--name", "x", "--sizes", "4,five"])
    assert result.exit_code == 2 and "Invalid value for '--sizes'" in result.output


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_each_config_command_takes_its_options_from_the_config_alone(command):
    """Every option of the command is a config field's, or one of the command line's own few."""
    params = {p.name for p in cli.commands[command].params}
    from_config = {spec.name for spec in specs(CONFIGS[command])}
    if command in ("finetune", "extract", "sweep"):
        from_config |= {f.name for f in fields(FinetuneConfig) if f.name in params}  # the task options
    assert params - from_config == COMMAND_ONLY[command]


@pytest.mark.parametrize("config", [*CONFIGS.values(), Compression])
def test_every_default_reads_back_through_its_parser(config):
    for spec in specs(config):
        if spec.option.parse and not spec.option.multiple and spec.default is not None:
            assert spec.option.parse(as_text(spec.default)) == spec.default, spec.flag


def test_one_device_option_reaches_both_templates_of_a_sweep():
    sweep = cli.commands["sweep"]
    assert [p.name for p in sweep.params].count("device") == 1
    config = SweepConfig.of(teacher="t", output="o", points=((1, 9, 0.1),), device="cpu", hsk_lr=1e-3, limit=40)
    assert config.extract.device == config.train.device == "cpu"
    assert (config.extract.teacher, config.extract.task, config.extract.limit) == ("t", None, 40)  # the teacher's task
    assert config.train.hsk_lr == 1e-3 and config.student == "rosita"


def test_flat_sweep_settings_no_template_takes_are_refused():
    with pytest.raises(ConfigError, match=r"unknown sweep settings \['chunk_rows'\]"):
        SweepConfig.of(teacher="t", output="o", points=((1, 9, 0.1),), chunk_rows=1024)
    given = ExtractConfig(teacher="t", task=None, output="", chunk_rows=1024)
    assert SweepConfig.of(output="o", points=((1, 9, 0.1),), extract=given).extract.chunk_rows == 1024


def test_a_shared_option_reads_the_same_in_every_command():
    for name in ("device", "storage_options", "overwrite", "as_json", "quiet"):
        helps = {p.help for command in cli.commands.values() for p in command.params if p.name == name}
        assert len(helps) == (2 if name == "overwrite" else 1), (name, helps)  # convert and slice: "at DST"


def test_two_different_options_under_one_name_are_a_mistake_caught_early():
    @dataclass(frozen=True)
    class Clash:
        inner: Inner = nested(Inner, factory=Inner)
        size: int = Option("Another size.").field(4)

    with pytest.raises(TypeError, match="two different options are named 'size'"):
        specs(Clash)


def test_export_offers_the_stages_formats():
    from hskstore.stages.export import FORMATS

    fmt = next(p for p in cli.commands["export"].params if p.name == "fmt")
    assert tuple(fmt.type.choices) == FORMATS
