"""Bad input through the CLI's error boundary (``autokd.cli.main``): exit code 2, one located line per problem on
stderr, never a traceback."""

from __future__ import annotations

import pytest

BASE = """\
version: 1
name: tiny
dataset:
  name: digits
  image_size: 8
model:
  family: mobilenetv2
  width_mult: {choices: [0.25, 0.5]}
distill:
  kd: {choices: [true, false]}
  temperature: 4.0
  alpha: 0.9
  teacher:
    width: 8
    epochs: 1
train:
  epochs: 1
  lr: 0.05
search:
  n_trials: 2
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    """Replace exactly one whole line ``old`` by ``new`` (which may span several lines)."""
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line == old]
    assert len(hits) == 1, f"{old!r} is not exactly one line of the base space"
    lines[hits[0]:hits[0] + 1] = new.splitlines()
    return "\n".join(lines) + "\n"


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the ``occurrence``-th ``needle``."""
    found = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(found) >= occurrence, f"{needle!r} not in the text"
    return found[occurrence - 1]


def one_error(res, *fragments: str) -> str:
    """The result is exit 2 with exactly one 'error:' line (and nothing else) on stderr; return that line."""
    assert res.code == 2, (res.code, res.err, res.out)
    assert "Traceback" not in res.err + res.out
    assert len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


@pytest.fixture
def bad(space_file, cli):
    """``bad(text, *extra_args) -> (result, path)``: validate a space file written from ``text``."""

    def run(text: str, *args: str, command: str = "validate"):
        path = space_file(text)
        return cli(command, str(path), *args), str(path)

    return run


def test_base_space_is_valid(bad):
    res, _ = bad(BASE)
    assert res.code == 0, res.err
    assert res.err == ""


# --- the schema --------------------------------------------------------------------------------


def test_unknown_key_names_file_line_path_and_close_match(bad):
    text = edit("  epochs: 1", "  epoch: 1")  # train.epochs (the teacher's is indented by four spaces)
    res, path = bad(text)
    line = line_of(text, "  epoch: 1")
    one_error(res, f"error: {path}:{line}: train.epoch: unknown field", "did you mean 'epochs'?")


def test_unknown_top_level_key(bad):
    text = BASE + "serach:\n  seed: 1\n"
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'serach:')}: serach: unknown field", "did you mean 'search'?")


def test_wrong_type(bad):
    text = edit("  lr: 0.05", "  lr: abc")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'lr: abc')}: train.lr: ", "valid number", "'abc'")


def test_wrong_type_in_nested_block(bad):
    text = edit("    width: 8", "    width: wide")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'width: wide')}: distill.teacher.width: ", "'wide'")


@pytest.mark.parametrize("low,high", [(4, 2), (2, 2)])
def test_low_not_below_high(bad, low, high):
    text = edit("  width_mult: {choices: [0.25, 0.5]}", f"  width_mult: {{low: {low}, high: {high}}}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'width_mult')}: model.width_mult", "low must be < high")


def test_empty_choices(bad):
    text = edit("  width_mult: {choices: [0.25, 0.5]}", "  width_mult: {choices: []}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'width_mult')}: model.width_mult.choices: ",
              "choices must not be empty")


def test_duplicate_choices(bad):
    text = edit("  width_mult: {choices: [0.25, 0.5]}", "  width_mult: {choices: [0.5, 0.5]}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'width_mult')}: model.width_mult.choices: ", "distinct")


def test_misspelt_dataset_suggests_the_valid_name(bad):
    text = edit("  name: digits", "  name: cifar")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'name: cifar')}: dataset.name: ", "'cifar'",
              "did you mean 'cifar10'?")


def test_misspelt_model_family(bad):
    text = edit("  family: mobilenetv2", "  family: mobilenet_v2")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'mobilenet_v2')}: model.family: ", "'mobilenet_v2'",
              "did you mean 'mobilenetv2'?")


def test_yaml_syntax_error_gives_the_line(bad):
    text = edit("  lr: 0.05", "  lr: 1: 2")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'lr: 1: 2')}: ", "YAML syntax error")


def test_yaml_tab_indentation(bad):
    text = edit("  lr: 0.05", "\tlr: 0.05")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'lr: 0.05')}: ", "YAML syntax error")


def test_missing_file(cli, tmp_path):
    path = tmp_path / "nope.yaml"
    res = cli("validate", str(path))
    one_error(res, f"error: {path}: no such file")


def test_directory_instead_of_file(cli, tmp_path):
    res = cli("validate", str(tmp_path))
    one_error(res, f"error: {tmp_path}: ", "directory")


def test_empty_file(bad):
    res, path = bad("")
    one_error(res, f"error: {path}: ", "empty")


def test_not_a_mapping(bad):
    res, path = bad("- 1\n- 2\n")
    one_error(res, f"error: {path}:1: ", "mapping")


@pytest.mark.parametrize("alpha", ["1.5", "-0.1", "{choices: [0.5, 1.2]}"])
def test_alpha_out_of_unit_interval(bad, alpha):
    text = edit("  alpha: 0.9", f"  alpha: {alpha}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'alpha:')}: distill.alpha: ", "out of range", "[0.0, 1.0]")


@pytest.mark.parametrize("temperature", ["0", "-1", "{low: 0.0, high: 4.0}"])
def test_temperature_not_positive(bad, temperature):
    text = edit("  temperature: 4.0", f"  temperature: {temperature}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'temperature:')}: distill.temperature: ", "out of range")


def test_duplicate_key_points_at_the_second_one(bad):
    text = edit("  lr: 0.05", "  lr: 0.05\n  epochs: 3")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'epochs: 3')}: train.epochs: ", "twice")


def test_version_2(bad):
    text = BASE.replace("version: 1", "version: 2")
    res, path = bad(text)
    one_error(res, f"error: {path}:1: version: ", "2 is not valid", "valid: 1")


def test_missing_version(bad):
    text = BASE.replace("version: 1\n", "")
    res, path = bad(text)
    one_error(res, f"error: {path}:", "version: required field is missing")


def test_even_kernel_size(bad):
    text = edit("  family: mobilenetv2", "  family: mobilenetv2\n  kernel_size: {choices: [3, 4]}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'kernel_size')}: model.kernel_size: ", "4 must be odd")


def test_log_range_needs_positive_low(bad):
    text = edit("  lr: 0.05", "  lr: {low: 0.0, high: 0.1, log: true}")
    res, path = bad(text)
    assert res.code == 2
    assert "Traceback" not in res.err
    assert any(f"{path}:{line_of(text, 'lr:')}: train.lr.low: a log range needs low > 0" in line
               for line in res.error_lines), res.err


def test_field_not_used_by_family(bad):
    text = edit("  family: mobilenetv2", "  family: resnet\n  conv: {choices: [depthwise, standard]}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'conv:')}: model.conv: ", "does not use")


def test_bad_value_inside_choices(bad):
    text = edit("  width_mult: {choices: [0.25, 0.5]}", "  width_mult: {choices: [0.25, abc]}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'width_mult')}: model.width_mult.choices.1: ", "'abc'")


def test_non_string_key_gives_its_own_line(bad):
    text = edit("  lr: 0.05", "  lr: 0.05\n  3: x")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, '3: x')}: train.3: ")


def test_several_problems_are_reported_at_once_one_line_each(bad):
    text = edit("  lr: 0.05", "  lr: abc\n  epoch: 2")
    text = edit("  name: digits", "  name: cifar", text)
    res, path = bad(text)
    assert res.code == 2
    assert "Traceback" not in res.err
    assert len(res.err_lines) == 3, res.err
    assert all(line.startswith("error: ") for line in res.err_lines)
    joined = "\n".join(res.err_lines)
    assert f"{path}:{line_of(text, 'lr: abc')}: train.lr: " in joined
    assert f"{path}:{line_of(text, 'epoch: 2')}: train.epoch: unknown field" in joined
    assert f"{path}:{line_of(text, 'name: cifar')}: dataset.name: " in joined


def test_range_on_categorical_field_is_one_line(bad):
    text = edit("  kd: {choices: [true, false]}", "  kd: {low: 0, high: 1}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'kd:')}: distill.kd", "not a range")


def test_typo_in_choices_key_is_one_line_with_suggestion(bad):
    text = edit("  width_mult: {choices: [0.25, 0.5]}", "  width_mult: {choice: [0.25, 0.5]}")
    res, path = bad(text)
    one_error(res, f"error: {path}:{line_of(text, 'width_mult')}: model.width_mult", "did you mean 'choices'?")


# --- --set -------------------------------------------------------------------------------------


def test_set_without_equals(bad):
    res, _ = bad(BASE, "--set", "train.epochs")
    one_error(res, "error: --set: ", "dotted.path=VALUE", "'train.epochs'")


def test_set_with_empty_path(bad):
    res, _ = bad(BASE, "--set", "=3")
    one_error(res, "error: --set: ", "dotted.path=VALUE")


def test_set_unknown_path_suggests_close_match(bad):
    res, _ = bad(BASE, "--set", "train.epoch=3")
    one_error(res, "error: --set train.epoch=3: train.epoch: unknown field", "did you mean 'epochs'?")


def test_set_value_validated_like_the_file(bad):
    res, _ = bad(BASE, "--set", "distill.alpha=1.5")
    one_error(res, "error: --set distill.alpha=1.5: distill.alpha: ", "out of range")


def test_set_list_where_a_dimension_is_expected(bad):
    res, _ = bad(BASE, "--set", "model.width_mult=[0.5]")
    one_error(res, "error: --set model.width_mult=[0.5]: model.width_mult: ")


def test_set_invalid_yaml_value(bad):
    res, _ = bad(BASE, "--set", "train.lr=[1")
    one_error(res, "error: --set", "train.lr", "not valid YAML")


# --- storage, study, command line ------------------------------------------------------------------


def test_bad_storage_url_on_search(bad):
    res, _ = bad(BASE, "--storage", "nonsense", command="search")
    one_error(res, "error: --storage: ", "'nonsense'", "not a storage URL")


def test_bad_storage_url_on_studies(cli):
    one_error(cli("studies", "--storage", "nonsense"), "error: --storage: ", "not a storage URL")


@pytest.mark.parametrize("name", ["../x", "../../x", "a/b", "..", ".", ".hidden", "a b", "x" * 101])
def test_a_study_name_that_is_a_path_is_refused_before_anything_is_made(bad, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    res, _ = bad(BASE, "--study", name, "--device", "cpu", command="search")  # the default storage: studies/
    one_error(res, "error: --study: ", repr(name), "letters, digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # no studies/, no database, no folder


def test_report_opens_a_study_whatever_its_name(cli, tmp_path, tiny_space):
    from autokd.space import space_from_dict
    from autokd.study import create_or_load_study

    url = f"sqlite:///{tmp_path}/s.db"
    create_or_load_study(space_from_dict(tiny_space), storage=url, study_name="odd name/with slash")
    res = cli("report", "--storage", url, "--study", "odd name/with slash", "--json")
    assert res.code == 0, res.err


def test_report_missing_database(cli, tmp_path):
    db = tmp_path / "missing.db"
    res = cli("report", "--storage", f"sqlite:///{db}", "--study", "tiny")
    one_error(res, "error: --storage: ", "no study database")
    assert not db.exists()


def test_report_unknown_study(cli, tmp_path, tiny_space):
    from autokd.space import space_from_dict
    from autokd.study import create_or_load_study

    url = f"sqlite:///{tmp_path}/s.db"
    create_or_load_study(space_from_dict(tiny_space), storage=url)
    res = cli("report", "--storage", url, "--study", "nope")
    one_error(res, "error: --study: ", "no study 'nope'")
    res = cli("report", "--storage", url, "--study", "tiyn")
    one_error(res, "error: --study: ", "no study 'tiyn'", "did you mean 'tiny'?")


def test_report_needs_a_space_or_a_study(cli):
    one_error(cli("report"), "error: report: ", "--study")


@pytest.mark.parametrize("argv", [["validate", "SPACE", "--bogus"], ["--bogus"], ["search", "SPACE", "--timeout",
                                                                                    "soon"]])
def test_usage_errors_are_one_plain_line(bad, space_file, cli, argv):
    path = str(space_file(BASE))
    res = cli(*[path if a == "SPACE" else a for a in argv])
    line = one_error(res)
    assert "╭" not in res.err and "Usage:" not in res.err
    assert "--help" in line


def test_unknown_option_names_the_option(bad):
    res, _ = bad(BASE, "--bogus")
    one_error(res, "No such option: --bogus")


def test_missing_argument(cli):
    one_error(cli("validate"), "Missing argument", "SPACE")


def test_cuda_device_unavailable(bad):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    res, _ = bad(BASE, "--device", "cuda", command="search")
    one_error(res, "error: --device: ", "CUDA is not available")


def test_unknown_device(bad):
    res, _ = bad(BASE, "--device", "tpu", command="search")
    one_error(res, "error: --device: ", "'tpu'")


def test_internal_error_is_one_line_exit_1(bad, monkeypatch):
    import autokd.cli.validate as validate_cmd

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(validate_cmd, "dimensions", boom)
    res, _ = bad(BASE)
    assert res.code == 1
    assert "Traceback" not in res.err
    assert len(res.err_lines) == 1
    assert res.err_lines[0].startswith("error: internal error: RuntimeError: kaboom")
    assert "AUTOKD_DEBUG" in res.err_lines[0]


# --- data and teacher problems found when the search starts -----------------------------------------


@pytest.fixture
def search_in_tmp(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(*args: str):
        return bad(BASE, "--storage", f"sqlite:///{tmp_path}/s.db", "--device", "cpu", *args, command="search")

    return run


def test_dataset_without_files(search_in_tmp, tmp_path):
    res, _ = search_in_tmp("--set", "dataset.name=mnist", "--set", f"dataset.root={tmp_path}/nodata")
    one_error(res, "error: dataset.root: mnist not found under", "dataset.download: true")
    assert not (tmp_path / "nodata").exists()


def test_torchvision_dataset_without_root(search_in_tmp):
    res, _ = search_in_tmp("--set", "dataset.name=cifar10")
    one_error(res, "error: dataset.root: cifar10 not found", "dataset.download: true")


def test_missing_teacher_checkpoint(search_in_tmp, tmp_path):
    res, _ = search_in_tmp("--set", f"distill.teacher.checkpoint={tmp_path}/missing.pt")
    one_error(res, "error: distill.teacher.checkpoint: no such file")


def test_fixing_the_space_after_a_failed_start_is_not_refused(search_in_tmp, tmp_path, monkeypatch):
    import autokd.objective

    res, _ = search_in_tmp("--set", f"distill.teacher.checkpoint={tmp_path}/missing.pt")
    assert res.code == 2

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(autokd.objective, "run_config", boom)  # no need to train to see the refusal
    res, _ = search_in_tmp("--set", "search.max_failures=1")
    assert "different space" not in res.err
    assert res.code == 1 and "stopped after 1 failed trials" in res.err
