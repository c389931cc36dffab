from simulator.parallel_3d import Layout


def test_megatron_rank_order():
    lay = Layout(tp=8, dp=4, pp=2, vpp=1)
    assert lay.tp_group() == list(range(8))
    assert lay.dp_group() == [0, 8, 16, 24]
    assert lay.pp_group() == [0, 32]
    for rank in range(64):
        assert lay.rank(*lay.coords(rank)) == rank
