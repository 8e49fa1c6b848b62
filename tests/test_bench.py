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
