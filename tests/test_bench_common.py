"""bench/common.py's record header and bench/make_benchmarks.py's tables, on made-up records."""

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture
def bench(monkeypatch):
    """The bench/ modules, importable as the scripts import them."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import common
    import make_benchmarks

    return common, make_benchmarks


def test_header_command_reruns_as_typed_and_commit_is_the_repositorys(bench, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    common, _ = bench
    argv = ["bench/explore_guidance.py", "ag 3", "agnull 3", "--label", "shipped weights"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)  # run from outside the repository
    header = common.record_header()
    assert shlex.split(header["command"]) == ["python", *argv]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=ROOT).stdout.strip()  # fmt: skip
    if not head:
        pytest.skip("not a git checkout")
    assert header["commit"] == head


def speed_record(machine: str, date: str, latents_per_s: float) -> dict:
    unet = {"channels": [80, 160], "blocks_per_level": 1, "attention_levels": [1]}
    return {"date": date, "machine": f"{machine}, 2 threads, torch 2.0, Linux", "commit": "abc",
            "command": "python bench/bench_diffusion.py", "unet_config": unet,
            "unet_params": 2_700_000, "guidance": 3.0, "guide": "autoguidance",
            "guide_params": 2_700_000, "train_latents_per_s": latents_per_s,
            "sampling_images_per_s": {"dpmpp-20": latents_per_s / 10}}  # fmt: skip


def write_records(results, name: str, rows: list[dict]) -> None:
    results.mkdir(exist_ok=True)
    (results / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_speed_rows_say_which_machine_measured_them(bench, tmp_path, monkeypatch):
    _, make_benchmarks = bench
    monkeypatch.setattr(make_benchmarks, "HERE", tmp_path)
    write_records(tmp_path / "results", "diffusion_speed.jsonl", [
        speed_record("Intel(R) Xeon(R) Processor", "2026-12-02 22:10 UTC", 270.7),
        speed_record("AMD EPYC", "2026-12-03 18:14 UTC", 118.7),
    ])  # fmt: skip
    for section in (make_benchmarks.speed_section, make_benchmarks.training_section):
        out: list[str] = []
        section(out)
        rows = [line for line in out if line.startswith("| ") and "80, 160" in line]
        assert len(rows) == 2, out
        assert "Xeon" in rows[0] and "2026-12-02" in rows[0]
        assert "AMD EPYC" in rows[1] and "2026-12-03" in rows[1]


def test_gpu_subsection_follows_the_gpu_pipeline_records(bench, tmp_path, monkeypatch):
    _, make_benchmarks = bench
    monkeypatch.setattr(make_benchmarks, "HERE", tmp_path)
    out: list[str] = []
    make_benchmarks.training_section(out)
    assert any("no session so far has been lent a GPU" in line for line in out)
    write_records(tmp_path / "results", "gpu_pipeline.jsonl", [{"total_seconds": 400.0}])
    out = []
    make_benchmarks.training_section(out)
    assert not any("no session so far has been lent a GPU" in line for line in out)


def test_header_says_when_the_code_that_ran_was_not_the_commits(tmp_path):
    # A copy of bench/common.py in a repository of its own, so that its state can be changed.
    repo = tmp_path / "repo"
    (repo / "bench" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "common.py", repo / "bench" / "common.py")
    (repo / "bench" / "results" / "speed.jsonl").write_text("{}\n")
    (repo / "model.py").write_text("x = 1\n")

    def git(*args):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "start",
    )
    spec = importlib.util.spec_from_file_location("copied_common", repo / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    assert common.BENCH_DIR == repo / "bench"
    assert common.record_header()["uncommitted"] is False
    (repo / "bench" / "results" / "speed.jsonl").write_text("{}\n{}\n")  # records: not code
    (repo / "notes.txt").write_text("untracked\n")
    assert common.record_header()["uncommitted"] is False
    (repo / "bench" / "explore_new.py").write_text("print(1)\n")  # a script never committed
    assert common.record_header()["uncommitted"] is True
    (repo / "bench" / "explore_new.py").unlink()
    (repo / "model.py").write_text("x = 2\n")
    assert common.record_header()["uncommitted"] is True
