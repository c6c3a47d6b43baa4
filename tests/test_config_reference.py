"""docs/configuration.md is what tools/config_reference.py writes from the config dataclasses, and names every key
with a meaning."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"


def load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return load_generator()


def test_the_reference_is_up_to_date(generator):
    assert DOC.is_file(), "docs/configuration.md is missing: run python tools/config_reference.py"
    assert DOC.read_text(encoding="utf-8") == generator.render(), \
        "docs/configuration.md is out of date: run python tools/config_reference.py"


def test_every_field_appears_with_a_meaning(generator):
    text = DOC.read_text(encoding="utf-8")
    names = [name for name, _ in generator.sections()]
    assert names[:5] == ["model", "encoder", "data", "train", "decode"]
    for section, cls in generator.sections():
        assert f"\n## `{section}`\n" in text
        meanings = generator.field_meanings(cls)
        for f in dataclasses.fields(cls):
            assert meanings[f.name].strip(), f"{section}.{f.name} has no meaning"
            assert f"| `{section}.{f.name}` |" in text, f"{section}.{f.name} is not in docs/configuration.md"


def test_meanings_read_the_comments_above_and_beside_a_field(generator):
    @dataclasses.dataclass
    class Sample:
        # first line above
        # second line above
        both: int = 1  # beside
        beside: str = "x"  # only beside

        spaced: bool = False  # after a blank line

    assert generator.field_meanings(Sample) == {"both": "first line above second line above beside",
                                                "beside": "only beside",
                                                "spaced": "after a blank line"}

    @dataclasses.dataclass
    class Silent:
        said: int = 1  # something
        unsaid: int = 2

    with pytest.raises(ValueError, match="Silent.unsaid has no comment"):
        generator.field_meanings(Silent)


def test_check_fails_in_one_line_when_the_file_is_stale(generator, tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    assert generator.main(["--check"], out=stale) == 1  # missing
    stale.write_text(generator.render() + "\nedited by hand\n", encoding="utf-8")
    assert generator.main(["--check"], out=stale) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 2 and "out of date" in err  # one line per check
    assert generator.main([], out=stale) == 0
    assert generator.main(["--check"], out=stale) == 0
