"""Study specs: validation errors name the option and its line; grids expand deterministically."""

from pathlib import Path

import pytest

from dpscope.errors import ConfigError
from dpscope.study import load_spec, parse_spec
from dpscope.study.toml_lines import find_line

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
name = "demo"
[base]
dataset = "digits"
model = "mlp"
epochs = 2

[grid]
epsilon = [1.0, 8.0, "none"]
seeds = [0, 1]
"""


def spec_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_spec(text, Path("demo.toml"))
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("text, field, line", [
    ('name = "a"\n[base]\nepochs = 2\nepsilom = 3\n', "base.epsilom", 4),
    ('name = "a"\n\n[grid]\nepochs = [1, "many"]\n', "grid.epochs[1]", 4),
    ('name = "a"\n[base]\nepochs = "many"\n', "base.epochs", 3),
    ('name = "a"\n[grid]\nepsilon = []\n', "grid.epsilon", 3),
    ('name = "a"\n[base]\nepochs = 1\n[grid]\n', "grid", 4),
    ('name = "a"\n[grid]\nepsilon = 3\n', "grid.epsilon", 3),
    ('name = "a"\nsedes = [1]\n', "sedes", 2),
    ('name = "a"\n[grid]\nepsilon = [3, -1]\n', "grid.epsilon[1]", 3),
    ('name = "a"\n[grid]\nepsilon = [3]\n[[variants]]\nmodel = "cnn"\n[[variants]]\nepsilon = 2\n',
     "variants[1].epsilon", 7),
    ('name = "a"\n[[variants]]\nmodel = "cnn"\nseed = 3\n', "variants[0].seed", 4),
    ('name = "a"\n[base]\nnoise_multiplier = 1.0\n[grid]\nepsilon = [3]\n', "base.noise_multiplier", 3),
])
def test_invalid_spec_error_names_field_and_line(text, field, line):
    message = spec_error(text)
    assert f"demo.toml, line {line}: {field}" in message


def test_unknown_option_suggests_the_close_name():
    assert "did you mean 'epsilon'" in spec_error('name = "a"\n[grid]\nepsilom = [1.0]\n')


def test_duplicate_grid_values_are_refused():
    assert "appears twice" in spec_error('name = "a"\n[grid]\nepsilon = [3, 3.0]\n')


def test_missing_file_and_bad_toml_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "nope.toml")
    assert "not valid TOML" in spec_error('name = "a"\n[grid\n')


def test_grid_expands_to_the_cartesian_product_with_readable_ids():
    runs = parse_spec(VALID, Path("demo.toml")).runs()
    assert [r.id for r in runs] == [
        "eps1-seed0", "eps8-seed0", "nonprivate-seed0",
        "eps1-seed1", "eps8-seed1", "nonprivate-seed1",
    ]
    assert [(r.config.epsilon, r.config.seed) for r in runs] == [
        (1.0, 0), (8.0, 0), (None, 0), (1.0, 1), (8.0, 1), (None, 1)]
    assert all(r.config.epochs == 2 and r.config.model == "mlp" for r in runs)
    assert [r.position for r in runs] == list(range(6))


def test_ids_are_stable_when_a_grid_value_is_added():
    before = {r.id: r.config for r in parse_spec(VALID, Path("demo.toml")).runs()}
    grown = VALID.replace('[1.0, 8.0, "none"]', '[1.0, 3.0, 8.0, "none"]')
    after = {r.id: r.config for r in parse_spec(grown, Path("demo.toml")).runs()}
    assert before.items() <= after.items()
    assert len(after) == 8


def test_variants_cross_the_grid_and_override_base():
    text = VALID + '[[variants]]\nmodel = "cnn"\nlr = 0.1\n[[variants]]\nname = "small"\nbatch_size = 32\n'
    runs = parse_spec(text, Path("demo.toml")).runs()
    assert len(runs) == 12
    by_id = {r.id: r.config for r in runs}
    assert by_id["cnn-lr0.1-eps1-seed0"].model == "cnn"
    assert by_id["cnn-lr0.1-eps1-seed0"].lr == 0.1
    assert by_id["small-nonprivate-seed1"].batch_size == 32
    assert by_id["small-nonprivate-seed1"].model == "mlp"


def test_relative_paths_are_relative_to_the_spec_file(tmp_path):
    text = 'name = "a"\n[base]\ndata_dir = "data"\n'
    (run,) = parse_spec(text, tmp_path / "specs" / "a.toml").runs()
    assert run.config.data_dir == (tmp_path / "specs" / "data").resolve()


def test_find_line_handles_array_tables_and_quoted_keys():
    text = 'name = "a"\n[[variants]]\nmodel = "x"\n[[variants]]\n"lr" = 1\n'
    assert find_line(text, ("variants", 1, "lr")) == 5
    assert find_line(text, ("variants", 0, "model")) == 3
    assert find_line(text, ("name",)) == 1


@pytest.mark.parametrize("name, runs", [("quickstart", 8), ("pneumonia", 24)])
def test_shipped_specs_expand(name, runs):
    spec = load_spec(ROOT / "studies" / f"{name}.toml")
    planned = spec.runs()
    assert len(planned) == runs
    assert len({r.id for r in planned}) == runs
