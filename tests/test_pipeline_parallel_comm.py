"""Pipeline stages pair their sends and receives (llama_course/parallel/pipeline_parallel_comm.py): the
course's schedules run under NCCL's rendezvous rules (strict mode on gloo) and match one process."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import workers_model_parallel as workers  # noqa: E402
from test_tensor_parallel import assert_matches_single_process  # noqa: E402

from llama_course.core.testing import spawn  # noqa: E402

ONE_F_ONE_B = {"parallel.pp": 2, "cluster.num_gpus": 2, "parallel.schedule": "1f1b", "parallel.global_batch_size": 4}


def test_1f1b_on_two_stages_with_four_micro_batches_keeps_nccl_rules():
    """p = 2, m = 4: unpaired, rank 0 sends F1 while rank 1 sends B0 and both wait (NCCL deadlock)."""
    result = spawn(workers.strict_layouts, 2, [ONE_F_ONE_B], timeout=180)[0][0]
    assert result["engine"] == "pipeline_parallel"
    assert_matches_single_process(result)
