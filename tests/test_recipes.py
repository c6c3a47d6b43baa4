"""recipes/: the best recipe's fixed files are in the repository, listed with their SHA-256 in a manifest, and
its dry run checks the data and those files and lists the stages without running any."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.data.synth import make_synth

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FILES = RECIPES / "files"
SCRIPT = RECIPES / "best_recipe.sh"
STAGES = ["lite2.pt", "lite0_pair.pt", "smooth", "smooth_scst", "hard", "hard_scst"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None,
                                reason="the recipes are bash scripts (sha256sum from coreutils)")


def _manifest() -> dict[str, str]:
    lines = (FILES / "SHA256SUMS").read_text().splitlines()
    return {name.lstrip("*"): digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def _dry_run(data: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", str(data), str(out)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHON": sys.executable, **env})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("recipes") / "synth", n_train=4, n_val=2, n_test=1, size=16)


def test_the_manifest_lists_every_fixed_file_with_its_hash():
    listed = _manifest()
    assert set(listed) == {p.name for p in FILES.iterdir()} - {"SHA256SUMS"}
    assert {"lite0_pair.pt", "lite2_scst.pt"} <= set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((FILES / name).read_bytes()).hexdigest() == digest, name


def test_no_recipe_recovers_a_file_from_git_history():
    for script in RECIPES.glob("*.sh"):
        assert "git show" not in script.read_text() and "git -C" not in script.read_text(), script.name


def test_the_dry_run_lists_the_stages_and_runs_nothing(data, tmp_path):
    out = tmp_path / "out"
    run = _dry_run(data, out)
    assert run.returncode == 0, run.stderr
    for stage in STAGES:
        assert f"  {stage}: to run" in run.stdout
    assert run.stdout.count(": to run") == len(STAGES) + 6  # and the six scored settings
    assert not out.exists()
    # what is done already is said so; an interrupted training is resumed
    (out / "smooth").mkdir(parents=True)
    (out / "lite2.pt").write_bytes(b"")
    (out / "smooth" / "model.pt").write_bytes(b"")
    (out / "hard" / "checkpoints").mkdir(parents=True)
    (out / "hard" / "checkpoints" / "last.ckpt").write_bytes(b"")
    run = _dry_run(data, out)
    assert run.returncode == 0, run.stderr
    assert "  lite2.pt: done" in run.stdout and "  smooth: done" in run.stdout
    assert "  hard: to resume from its last checkpoint" in run.stdout
    assert "  smooth_scst: to run" in run.stdout


def test_a_tampered_fixed_file_stops_the_recipe_in_one_line(data, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    for name in _manifest():
        (files / name).symlink_to(FILES / name)
    (files / "lite0_pair.pt").unlink()
    tampered = bytearray((FILES / "lite0_pair.pt").read_bytes()[:4096])
    tampered[100] ^= 1
    (files / "lite0_pair.pt").write_bytes(bytes(tampered))
    run = _dry_run(data, tmp_path / "out", RECIPE_FILES=str(files))
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "lite0_pair.pt" in lines[0] and "SHA-256" in lines[0], run.stderr
    (files / "lite0_pair.pt").unlink()  # missing: the same
    run = _dry_run(data, tmp_path / "out", RECIPE_FILES=str(files))
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1 and "lite0_pair.pt: missing" in run.stderr


def test_the_dry_run_needs_a_dataset_folder(tmp_path):
    run = _dry_run(tmp_path / "nowhere", tmp_path / "out")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"best_recipe.sh: {tmp_path / 'nowhere'}: unrecognised dataset")


@pytest.mark.slow
def test_decoder_families_runs_every_stage_and_writes_its_table(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=60, n_val=10, n_test=2, size=32)
    out = tmp_path / "families"
    env = {**os.environ, "PYTHON": sys.executable, "CONFIG": "synth_%s", "TYPES": "soft adaptive", "EPOCHS": "1",
           "EVAL_ARGS": "--no-meteor --tokenizer python", "CAPTIONER_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(["bash", str(RECIPES / "decoder_families.sh"), str(data), str(out)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    for stage in ("lite0_soft", "lite0_soft_scst", "lite0_adaptive", "lite0_adaptive_scst"):
        assert (out / stage / "model.pt").is_file() and (out / stage / "val.json").is_file()
    table = (out / "table.md").read_text()
    assert "| lite0 soft | " in table and "| lite0 adaptive + SCST | " in table
    assert table.count("[") == 4  # the adaptive rows against soft: BLEU-4 and CIDEr-D intervals, both stages
    assert "| lite0_adaptive_scst | " in table  # seconds per epoch
    again = subprocess.run(["bash", str(RECIPES / "decoder_families.sh"), str(data), str(out)], capture_output=True,
                           text=True, timeout=600, env=env)
    assert again.returncode == 0 and "done before" in again.stdout  # resumable: nothing trained twice
    alone = subprocess.run(["bash", str(RECIPES / "decoder_families.sh"), str(data), str(out)], capture_output=True,
                           text=True, timeout=600, env={**env, "TYPES": "adaptive"})
    assert alone.returncode == 0, alone.stderr[-2000:]  # one type: its rows, nothing to compare
    assert "| lite0 adaptive | " in (out / "table.md").read_text() and "[" not in (out / "table.md").read_text()

    # each family as the sixth member of a (stand-in) best recipe: the synthetic soft model and a hard one
    recipe = tmp_path / "recipe"
    hard = subprocess.run([sys.executable, "-m", "captioner.cli", "train", "--config", "synth_hard", "--data", str(data),
                           "--out", str(recipe / "hard_scst"), "--no-progress", "--set", "train.max_epochs=1"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert hard.returncode == 0, hard.stderr[-2000:]
    for name in ("lite2.pt", "smooth_scst/model.pt", "lite0_pair.pt"):
        (recipe / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "lite0_soft" / "model.pt", recipe / name)
    env = {**env, "RECIPE": str(recipe), "TEACHERS": ""}
    six = subprocess.run(["bash", str(RECIPES / "decoder_families.sh"), str(data), str(out)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert six.returncode == 0, six.stderr[-2000:]
    reports = {name: json.loads((out / name).read_text())
               for name in ("ensemble5.json", "ensemble6_soft.json", "ensemble6_adaptive.json")}
    assert all(r["images"] == 10 and r["metrics"]["CIDEr-D"] >= 0 for r in reports.values())
    table = (out / "table.md").read_text()
    assert "| best recipe (5 decoders) | " in table and "| + lite0 adaptive | " in table
    assert table.count("[") == 4 + 2 * 2 + 2  # + the six-decoder rows against five, and adaptive against soft


def test_distill_wants_a_teacher_file_of_its_own_for_an_extra_member(tmp_path):
    """A teacher with a sixth decoder never writes into (or goes on from) the five-decoder teacher's file."""
    for name in ("lite2.pt", "smooth_scst/model.pt", "lite0_pair.pt", "hard_scst/model.pt", "encoder.pth",
                 "extra.pt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"stand-in")
    env = {**os.environ, "PYTHON": sys.executable, "EXTRA_MEMBER": str(tmp_path / "extra.pt")}
    run = subprocess.run(["bash", str(RECIPES / "distill.sh"), str(tmp_path), str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert run.returncode == 1 and "EXTRA_MEMBER needs a TEACHER_FILE of its own" in run.stderr
    assert not (tmp_path / "teacher_train.jsonl").exists()
