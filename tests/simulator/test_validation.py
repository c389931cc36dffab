"""The validation data (configs/validation/) and the simulator's error on it.

Two sets, never mixed:
- CALIBRATION, IN SAMPLE: Megatron-LM 2021 Table 1 (the A100 matmul efficiency was chosen on these ten rows),
  LLM Foundry's four MPT H100 rows (the H100's) and the three 175B ZeRO-3 rows of Megatron-LM 2021 Table 2
  (DeepSpeed 2021's ZeRO-3 slowdown), so their small errors show that the fits worked, not that the simulator
  predicts anything.
- VALIDATION, OUT OF SAMPLE: every other file. Its accuracy is what docs/simulator/validation.md reports
  (`python benchmarks/simulator_validation.py --write docs/simulator/validation.md`); here it is asserted only as
  the issue-17 goal, marked as an expected failure while the goal is not met.
"""

import pytest

from simulator.config import load_config
from simulator.validation import compare, error, load_all, load_rows, load_source, summary


@pytest.fixture(scope="module")
def calibration_in_sample():
    return compare(load_all(role="calibration"))


def test_calibration_in_sample_within_the_fit(calibration_in_sample):
    """IN SAMPLE: the rows the constants were fitted on (A100 within 10%, H100 within 15%). Not a measure of
    accuracy."""
    assert len(calibration_in_sample) == 17
    for row in calibration_in_sample:
        assert row["role"] == "calibration"
        assert row["fits"], row
        assert abs(row["error"]) < (0.15 if row["gpu"].startswith("h100") else 0.10), row


def test_calibration_in_sample_errors_are_not_one_sided(calibration_in_sample):
    for gpu in ("a100", "h100"):
        errs = [r["error"] for r in calibration_in_sample if r["gpu"].startswith(gpu)]
        assert min(errs) < 0 < max(errs), gpu      # a calibrated model, not a biased one


def test_rows_follow_the_published_table():
    rows = load_rows()
    name, cfg, published = rows[5]
    assert name == "gpt-76.1b" and published == 140
    assert cfg["parallel"]["schedule"] == "interleaved_1f1b" and cfg["parallel"]["vpp"] == 3
    assert cfg["parallel"]["activation_checkpointing"] == "full" and cfg["training"]["precision"] == "fp16"


def _key(raw: dict) -> str:
    return repr(load_config(raw, runtime=False).to_dict())


def test_validation_set_is_broad_sourced_and_apart_from_calibration():
    calibration, validation = load_all(role="calibration"), load_all(role="validation")
    assert len({r.source for r in calibration}) == 3 and len(calibration) == 17
    assert len(validation) >= 20
    assert len({r.stack for r in validation}) >= 4
    assert not {_key(r.config) for r in calibration} & {_key(r.config) for r in validation}
    for r in validation:
        assert r.url.startswith("https://") and r.source and r.where and r.read, r.name
        assert isinstance(r.assumed, dict), r.name


def test_every_validation_row_is_a_valid_config():
    for r in load_all(role="validation"):
        cfg = load_config(r.config, runtime=False)
        assert cfg.cluster.num_gpus >= 8 and cfg.cluster.gpu != "cpu", r.name


def test_error_is_predicted_over_published_throughput():
    assert error("mfu", 0.5, 0.4) == pytest.approx(0.25)
    assert error("tokens_per_s_per_gpu", 90.0, 100.0) == pytest.approx(-0.10)
    assert error("step_time_s", 2.0, 1.0) == pytest.approx(-0.5)       # twice as slow: half the throughput
    s = summary([{"error": 0.1, "stack": "a"}, {"error": -0.3, "stack": "b"}, {"error": None, "stack": "b"}])
    assert (s["rows"], s["fit"], s["no_fit"]) == (3, 2, 1)
    assert s["mean_abs"] == pytest.approx(0.2) and s["max_abs"] == pytest.approx(0.3) and s["within_15"] == 1


def test_a_source_file_must_say_where_it_comes_from(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: x\nstack: y\nrows: [{name: a, published: 1}]\n")
    with pytest.raises(ValueError, match="missing 'url'"):
        load_source(str(bad))
    bad.write_text("source: x\nurl: https://x\nstack: y\nread: [shape: 1]\nrows: [{name: a, published: 1}]\n")
    with pytest.raises(ValueError, match="plain strings"):
        load_source(str(bad))


def test_rows_say_whose_rules_price_them():
    """DeepSpeed's runs are priced with DeepSpeed's rules, torch FSDP's with FSDP's, Llama 3 with its FSDP's."""
    by_stack = {}
    for r in load_all():
        by_stack.setdefault(r.stack, set()).add(r.system)
    assert by_stack["DeepSpeed + Megatron-LM"] == {"deepspeed"}
    assert by_stack["DeepSpeed ZeRO-3"] == {"deepspeed_2021"}         # Table 2's ZeRO-3 runs, spring 2021
    assert by_stack["Megatron-DeepSpeed"] == {"deepspeed"}
    assert by_stack["PyTorch FSDP (Composer)"] == by_stack["PyTorch FSDP2 (torchtitan)"] == {"fsdp2"}
    assert by_stack["Meta Llama 3 (PyTorch, 4-D parallelism)"] == {"fsdp_sharded"}


def test_deepspeed_2021_slowdown_is_calibrated_apart_from_its_validation_rows():
    """The slowdown was chosen on Table 2's 175B ZeRO-3 rows only; its 530B rows are validation."""
    calibration = [r for r in load_all(role="calibration") if r.system == "deepspeed_2021"]
    validation = [r for r in load_all(role="validation") if r.system == "deepspeed_2021"]
    assert [r.name for r in calibration] == ["175B ZeRO-3 384", "175B ZeRO-3 768", "175B ZeRO-3 1536"]
    assert [r.name for r in validation] == ["530B ZeRO-3 640", "530B ZeRO-3 1120", "530B ZeRO-3 2240"]


def test_a_row_with_an_unknown_system_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: x\nurl: https://x\nstack: y\nsystem: megatron\nrows: [{name: a, published: 1}]\n")
    with pytest.raises(ValueError, match="system must be one of"):
        load_source(str(bad))


def test_uneven_pipelines_are_in_the_validation_set():
    """BLOOM ran 5 | 6 ... 6 | 5 blocks per stage and Llama 3 405B 7 | 8 ... 8 | 7: both written as they ran."""
    by_name = {r.name: r for r in load_all(role="validation")}
    assert by_name["BLOOM 176B"].config["parallel"]["first_stage_layers"] == 5
    llama3 = load_config(by_name["405B on 16384"].config, runtime=False)
    assert (llama3.parallel.vpp, llama3.parallel.first_stage_layers, llama3.parallel.last_stage_layers) == (8, 7, 7)


@pytest.fixture(scope="module")
def validation_out_of_sample():
    return compare(load_all(role="validation"))


def _page_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "simulator_validation.py"
    spec = importlib.util.spec_from_file_location("simulator_validation", path)
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    return page


def test_the_page_reports_the_simulator_as_it_is(validation_out_of_sample, calibration_in_sample):
    """docs/simulator/validation.md is regenerated after every change that moves a number: its summary rows
    (in sample and out of sample) and every validation row are what the simulator predicts now."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "simulator" / "validation.md").read_text()
    page, regenerate = _page_module(), "stale page: python benchmarks/simulator_validation.py --write docs/simulator/validation.md"
    assert page.summary_block(calibration_in_sample, validation_out_of_sample) in text, regenerate
    assert page.source_sections(load_all(role="validation"), validation_out_of_sample) in text, regenerate
    svg = Path(__file__).resolve().parents[2] / "docs" / "simulator" / "img" / "validation_errors.svg"
    assert "](img/validation_errors.svg)" in text
    assert svg.read_text() == page.error_chart(calibration_in_sample, validation_out_of_sample), regenerate


def test_the_chart_puts_each_run_at_its_error():
    """The page's figure: a dot per run at its error (filled blue, red beyond 15%; hollow for calibration), an
    error beyond the axis at its end with its value written, a run that does not fit named instead of a dot."""
    from benchmarks.validation_chart import COLORS, HI, X1, error_chart, x_of

    def run(name, error, role="validation", stack="S"):
        return dict(name=name, error=error, role=role, stack=stack, memory_GB=90.0, capacity_GB=79.6)

    assert x_of(HI) == X1 and x_of(0.0) < x_of(0.1) < x_of(0.2)
    svg = error_chart([run("cal", -0.05, "calibration")],
                      [run("close", 0.10), run("miss", -0.20), run("far", 0.40, stack="T"), run("big", None)])
    dots = [line for line in svg.splitlines() if line.startswith("<circle")]
    assert len(dots) == 4
    assert f'cx="{x_of(0.10):.1f}"' in dots[0] and f'fill="{COLORS["validation"]}"' in dots[0]
    assert f'cx="{x_of(-0.20):.1f}"' in dots[1] and f'fill="{COLORS["miss"]}"' in dots[1]
    assert f'cx="{X1:.1f}"' in dots[2] and ">+40%</text>" in svg
    assert 'fill="white"' in dots[3] and f'cx="{x_of(-0.05):.1f}"' in dots[3]
    assert ">does not fit (90.0 of 79.6 GB)</text>" in svg
    assert svg.index(">S</text>") < svg.index(">close</text>") < svg.index(">T</text>") < svg.index(">far</text>")


@pytest.mark.xfail(strict=True, reason="issue 17 goal not met yet: see docs/simulator/validation.md")
def test_out_of_sample_goal(validation_out_of_sample):
    """OUT OF SAMPLE: mean |error| within 8%, none beyond 15%, every row fits (issue 17)."""
    s = summary(validation_out_of_sample)
    assert s["no_fit"] == 0 and s["mean_abs"] <= 0.08 and s["max_abs"] <= 0.15


def test_the_page_gives_each_miss_in_seconds():
    """benchmarks/simulator_validation.py's seconds table: a throughput predicted 20% high on a 10 s step means
    the published step took 12 s (+2 s); a step time is read as published; rows within 15% are left out."""
    page = _page_module()
    parts = {"compute": 6.0, "recompute": 1.0, "bubble": 2.0, "exposed_comm": 0.5, "optimizer": 0.5}
    common = dict(step_time_s=10.0, breakdown_s=parts, micro_batches=4, diagnosis="")
    rows = [dict(common, name="fast", metric="tokens_per_s_per_gpu", published=100.0, error=0.2, micro_batches=8),
            dict(common, name="slow", metric="step_time_s", published=7.0, error=-0.3),
            dict(common, name="close", metric="step_time_s", published=10.5, error=0.05),
            dict(common, name="diagnosed", metric="step_time_s", published=9.0, error=0.1, diagnosis="why"),
            dict(common, name="no fit", metric="step_time_s", published=9.0, error=None, step_time_s=None,
                 memory_parts_GB={"params": 1.0, "grads": 2.0, "optimizer": 3.0, "activations": 80.0, "total": 86.0},
                 capacity_GB=79.6)]
    lines = page.misses_in_seconds(rows).splitlines()
    assert lines[2] == "| fast | 8 | 10.00 s | 7.00 s | 2.00 s | 0.50 s | 0.50 s | 12.00 s | +2.00 s |"
    assert lines[3] == "| slow | 4 | 10.00 s | 7.00 s | 2.00 s | 0.50 s | 0.50 s | 7.00 s | -3.00 s |"
    assert lines[4].startswith("| diagnosed | 4 |") and len(lines) == 5           # 'close' is left out
    assert page.no_fit_memory(rows).splitlines()[2:] == ["| no fit | 1.0 | 2.0 | 3.0 | 80.0 | 86.0 | 79.6 |"]


def test_the_page_splits_each_misses_exposed_communication_by_kind(validation_out_of_sample):
    """benchmarks/simulator_validation.py's exposed-communication table: on every row it lists (beyond 15% or
    diagnosed), the kinds (tensor parallel, data parallel, ZeRO gathers, sends, overlap slowdown, step scalars)
    add up to the row's exposed comm, as simulate's comm_s splits it on the rank that ends the step."""
    page = _page_module()
    rows = [r for r in validation_out_of_sample
            if r["error"] is not None and (abs(r["error"]) > 0.15 or r["diagnosis"])]
    assert rows, "no validation row beyond 15% or diagnosed to check"
    lines = page.exposed_by_kind(rows).splitlines()[2:]
    assert len(lines) == len(rows)
    for r, line in zip(rows, lines):
        parts = [sum(r["comm_s"].get(k, 0.0) for k in keys) for _, keys in page.EXPOSED_KINDS]
        assert sum(parts) == pytest.approx(r["breakdown_s"]["exposed_comm"], rel=1e-6), r["name"]
        assert line == (f"| {r['name']} | {r['breakdown_s']['exposed_comm']:.2f} s | "
                        + " | ".join(f"{x:.2f} s" for x in parts) + " |")
