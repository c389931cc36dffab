from simulator.config import load_config
from simulator.plots import pipeline_gantt
from simulator.simulate import simulate


def test_gantt_chart_of_a_simulated_pipeline(tmp_path):
    trace = tmp_path / "pp.json"
    cfg = load_config({"model": {"preset": "small"}, "seq_len": 256, "cluster": {"gpu": "a100-80gb", "num_gpus": 4},
                       "parallel": {"pp": 4, "global_batch_size": 8}})
    simulate(cfg, trace_path=str(trace))
    png = tmp_path / "pp.png"
    fig = pipeline_gantt(str(trace), str(png))
    assert png.stat().st_size > 1000
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == 4
    assert len(ax.patches) == 2 * 4 * 8 + 4           # every F and B of 4 ranks x 8 micro-batches, + optimizer
