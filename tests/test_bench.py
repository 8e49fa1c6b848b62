import pytest

from cai_core.bench import bench_generate


def test_bench_generate_runs_both_sides_on_the_same_token_budget(tiny_model_path, workspace):
    result = bench_generate(tiny_model_path, workspace, prompts=3, rounds=1, new_tokens=4)
    assert result["generated_tokens_each"] == 3 * (1 + 2 * 1) * 4
    assert result["sequential_tokens_per_s"] > 0 and result["pipeline_tokens_per_s"] > 0
    assert result["speedup"] > 0 and result["roofline_tokens_per_s"] > 0
    fraction = result["pipeline_tokens_per_s"] / result["roofline_tokens_per_s"]
    assert result["pipeline_fraction_of_roofline"] == pytest.approx(fraction, abs=1e-3)
    assert result["dtype"] == "float32" and result["engine"] == "hf"


def test_realistic_mode_scales_the_reference_subsample_and_times_each_engine(tiny_model_path, workspace):
    from cai_core.bench import bench_workload

    seen = []
    result = bench_workload(
        tiny_model_path,
        workspace,
        prompts=4,
        rounds=1,
        new_tokens=4,
        reference_prompts=1,
        engines=("hf",),
        on_result=lambda side, r: seen.append(side),
    )
    assert seen == ["reference", "hf_pipeline"]
    reference, pipeline = result["reference"], result["hf_pipeline"]
    assert "measured on 1 of 4 prompts" in reference["note"]
    # the pipeline generated what its spool says, at most 4 tokens for each of 4 prompts x 3 steps
    assert 0 < pipeline["generated_tokens"] <= 4 * 3 * 4 and pipeline["engine_start_s"] >= 0
    assert reference["generated_tokens"] % 4 == 0  # one prompt's tokens, times four
    assert pipeline["tokens_per_s_vs_reference"] == pytest.approx(
        pipeline["tokens_per_s"] / reference["tokens_per_s"], rel=0.02
    )
