"""The benchmark command's own smoke tests: fast, no OBS; only the engine one needs the tiny model.

The report written to docs/benchmarks.md must be exactly what the command prints, re-runs
replace only the generated block, and `python -m bench --quick` runs end to end on the
cheap part. The benchmarks' figures themselves are not asserted here.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.bench_chat_to_screen import ProbeLog, Sample, percentile, summarize

REPO = Path(__file__).resolve().parent.parent

ROWS = [
    {"section": "Chat to screen", "name": "overhead, median", "value": 12.5, "unit": "ms",
     "target": "<= 50 ms", "ok": True, "how": "side by side"},
    {"section": "Chat to screen", "name": "overhead, p95", "value": 140.0, "unit": "ms",
     "target": "<= 100 ms", "ok": False},
    {"section": "Engine", "name": "a | pipe", "value": float("nan"), "unit": "s"},
]  # fmt: skip


def test_written_block_is_what_is_printed_and_reruns_replace_only_it(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text("# Intro by hand\n\nKeep me.\n", encoding="utf-8")
    info = {"CPU": "test cpu", "Cores": "2"}
    block = report.render(ROWS, info, {"Command": "`python -m bench`"})
    report.write_block(path, block)
    assert report.read_block(path) == block.rstrip("\n")
    assert path.read_text(encoding="utf-8").startswith("# Intro by hand\n\nKeep me.\n")

    path.write_text(path.read_text(encoding="utf-8") + "\nAfter the table.\n", encoding="utf-8")
    second = report.render(ROWS[:1], info, {"Command": "`python -m bench --quick`"})
    report.write_block(path, second)
    text = path.read_text(encoding="utf-8")
    assert report.read_block(path) == second.rstrip("\n")
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert "Keep me." in text and "After the table." in text
    assert "140" not in text  # the old table is gone


def test_table_shows_targets_status_and_escapes_cells() -> None:
    table = report.table(ROWS)
    lines = table.splitlines()
    assert lines[0].startswith("| Section | Figure | Result | Target | Status |")
    assert len(lines) == 2 + len(ROWS)
    assert all(line.count(" | ") == len(report.COLUMNS) - 1 for line in lines[2:])
    assert "| 12.5 ms | <= 50 ms | pass |" in lines[2]
    assert "**FAIL**" in lines[3]
    assert "a \\| pipe" in lines[4] and "n/a" in lines[4]
    assert lines[3].startswith("|  |")  # the section is named once per group


def test_rows_of_every_part_shape_are_normalized() -> None:
    engine = report.normalize(
        "Engine", {"name": "tiny: micro-batch", "s_per_image": 0.1, "speedup_vs_batch_1": 1.2}
    )
    assert engine[0]["value"] == 0.1 and engine[0]["unit"] == "s"
    assert engine[1]["unit"] == "x" and engine[1]["ok"] not in (True, False)  # not slower
    assert (
        report.normalize("E", {"name": "m", "s_per_image": 1, "speedup_vs_batch_1": 0.5})[1]["ok"]
        is False
    )
    commands = report.normalize(
        "Command path",
        {"name": "lines", "lines_per_second": 60000, "target": 50000, "meets_target": True},
    )
    assert commands[0]["ok"] is True and commands[0]["target"] == ">= 50,000 lines/s"
    obs = report.normalize("OBS", {"name": "x", "method": "link", "median_ms": 30, "p95_ms": 40})
    assert [r["value"] for r in obs] == [30, 40]
    odd = report.normalize("X", {"name": "new shape", "widgets": 3, "note": "hi"})
    assert odd[0]["value"] == 3 and "note=hi" in odd[0]["detail"]
    assert report.fmt_number(123456.7) == "123,457" and report.fmt_number(0.01234) == "0.0123"


def test_machine_description_names_the_essentials() -> None:
    info = report.machine(with_gpu=False)
    for key in ("CPU", "Cores", "RAM", "OS", "Python", "torch", "GPU"):
        assert info[key]


def test_chat_to_screen_overhead_is_total_minus_compute() -> None:
    samples = []
    for i in range(20):
        sent = 100.0 + i
        start, end = sent + 0.002, sent + 0.102  # 100 ms of compute
        samples.append(
            Sample(
                prompt=f"p{i}",
                sent=sent,
                compute={"start": start, "end": end, "pipeline_s": 0.09},
                applied=end + 0.020,
                rendered=end + 0.021 + (0.1 if i == 19 else 0.0),
                link_received=end + 0.005,
                legacy_seen=end + 0.6 if i % 2 else None,
            )
        )
    rows = {r["name"]: r for r in summarize(samples, "29")}
    overhead = rows["overhead (total - compute), median"]
    assert overhead["value"] == pytest.approx(23.0, abs=0.01) and overhead["ok"] is True
    assert rows["overhead (total - compute), p95"]["ok"] is True
    assert (
        "10/20 shown"
        in rows["original's way (watched file overwritten): chat line -> visible, median"]["detail"]
    )
    ratio = rows["original's way / this project, median whole latency"]["value"]
    assert ratio == pytest.approx(702 / 123, rel=0.01)
    assert math.isnan(percentile([], 95)) and percentile([1, 2, 3, 4], 50) == 2


def test_probe_log_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "probe.log"
    path.write_text('I tick 5\nT 1.0 40.5 0 0\nA 2.0 "p1"\nR 2.01 "p1"\nT 2.0 9', encoding="utf-8")
    log = ProbeLog(path).poll()
    assert log.applied == {"p1": 2.0} and log.rendered == {"p1": 2.01}
    assert log.ticks == [(1.0, 40.5, 0, 0)] and log.threads == {"tick": 5}
    with path.open("a", encoding="utf-8") as f:
        f.write('0.5 1 1\nL 3.0 1 "connected"\n')
    log.poll()
    assert log.ticks[-1] == (2.0, 90.5, 1, 1) and log.connected


def test_quick_run_of_the_cheap_part_prints_what_it_writes(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "commands", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report.read_block(out) == proc.stdout.strip("\n")
    assert "| **Command path** |" in proc.stdout and "lines/s" in proc.stdout
    assert "### Machine" in proc.stdout and "--quick --only commands" in proc.stdout


def test_unknown_part_is_refused() -> None:
    from bench.__main__ import parse_only

    assert parse_only("engine,chat-to-screen") == ["chat_to_screen", "engine"]
    with pytest.raises(SystemExit, match="unknown part"):
        parse_only("engin")


@pytest.mark.model
def test_engine_bench_rounds_and_tiny_vae_swap_run_on_the_cpu(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The CUDA rows' code (rounds alternating the full and the tiny VAE) on the tiny model."""
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    from bench import bench_engine as be
    from generator_host.core.generation import GenerationParams

    be._quiet()
    assert be.devices()[0] == be.CPU and be.CPU.full_size_batch == 2
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    like_cuda = be.Device(
        "cpu", "float32", "test", 2, (1, 1), tiny_vae=True, checker_in_quick=False, backend="torch"
    )
    rows = be.bench_full_size_on(pipe, like_cuda, False, tmp_path, size=64, model_label="tiny")
    names = [r["name"] for r in rows]
    assert names == [
        "tiny 64x64, 1 step, test: batch 1",
        "tiny 64x64, 1 step, test: micro-batch of 2",
        "tiny 64x64, 1 step, test: micro-batch of 2: images/s vs batch 1",
        "tiny 64x64, 1 step, test: engine's choice (generate_many, 2 waiting)",
        "tiny 64x64, 1 step, test: engine's choice: images/s vs batch 1",
        "tiny 64x64, 1 step, test, tiny VAE decoder: batch 1",
        "tiny 64x64, 1 step, test, tiny VAE decoder: micro-batch of 2",
        "tiny 64x64, 1 step, test, tiny VAE decoder: micro-batch of 2: images/s vs batch 1",
        "tiny 64x64, 1 step, test, tiny VAE decoder: engine's choice (generate_many, 2 waiting)",
        "tiny 64x64, 1 step, test, tiny VAE decoder: engine's choice: images/s vs batch 1",
        "tiny 64x64, 1 step, test: tiny VAE decoder vs full VAE, images/s at batch 1",
    ]
    shaped = [r for row in rows for r in report.normalize("Engine", row)]
    assert sum(r.get("target", "").startswith(">= 1.5x") for r in shaped) == 2  # micro-batch
    assert sum(r.get("target", "").startswith("never < 1x") for r in shaped) == 2  # choice
    assert all(r["value"] > 0 for r in shaped)
    assert not isinstance(pipe.vae, AutoencoderTiny)  # the full VAE is back after the rounds

    old = be.use_tiny_vae(pipe)  # the swap alone: right image size from the tiny decoder
    assert isinstance(pipe.vae, AutoencoderTiny) and pipe.vae_scale_factor == 8
    assert old.config.block_out_channels == [4, 8]
    engine = be.prebuilt_engine(pipe, be.CPU, 2, warm_up=False, folder=tmp_path / "m")
    result = engine.generate(GenerationParams("x", steps=1, width=64, height=80, seed=3))
    assert result.images[0].image.size == (64, 80)


@pytest.mark.model
def test_gpu_benchmark_runs_end_to_end_on_the_cpu_with_tiny_configs() -> None:
    """`python -m bench --gpu`'s code path, before any GPU is seen (issue 16)."""
    from bench import bench_gpu
    from tests.fixtures_model import model_libraries_available
    from tests.requirements import require

    require(model_libraries_available(), "torch, diffusers and transformers are installed")
    rows = bench_gpu.dry_run()
    names = [r["name"] for r in rows]
    for model in ("SD-Turbo 64x64", "SDXL-Turbo 64x64", "SDXL-Turbo 128x128"):
        for kind in ("full", "tiny"):
            assert f"{model}, 1 step, cpu float32, {kind} VAE: batch 1" in names
            assert f"{model}, 1 step, cpu float32, {kind} VAE: micro-batch of 4, per image" in names
        assert f"{model}, 1 step, cpu float32: tiny vs full VAE, images/s at batch 1" in names
    assert any("torch.compile time" in n for n in names)
    assert all(isinstance(r["value"], float) and math.isfinite(r["value"]) for r in rows)


def test_gpu_benchmark_without_a_gpu_says_what_to_run_instead() -> None:
    import torch

    from bench import bench_gpu

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the real GPU benchmark would run")
    with pytest.raises(SystemExit, match="--dry-run"):
        bench_gpu.run()
