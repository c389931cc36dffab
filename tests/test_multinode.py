"""Two nodes training together: each node is a network namespace with its own address (veth pair), and
`torchrun --nnodes 2 --rdzv-backend c10d` joins them, exactly as on two real machines.

Needs root and iproute2 (`ip netns`), which CI has; the namespaces and addresses are this test's own.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from llama_course.trainer import run_worker
from simulator.config import load_config

OVER = ["parallel.global_batch_size=8", "parallel.micro_batch_size=2", "seq_len=64", "training.steps=4",
        "training.eval_every=0", "training.eval_batches=1", "parallel.implementation=torch"]


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("this test needs root and iproute2 (ip netns); CI runs as root with both")
    tag = uuid.uuid4().hex[:6]
    hosts = [(f"lc{tag}a", f"lc{tag}x", "10.213.7.1"), (f"lc{tag}b", f"lc{tag}y", "10.213.7.2")]
    try:
        for ns, _, _ in hosts:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1])
        for ns, dev, addr in hosts:
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        yield hosts
    finally:
        for ns, _, _ in hosts:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_nodes_over_veth_match_one_process(tmp_path, two_hosts):
    endpoint = f"{two_hosts[0][2]}:29611"
    procs = []
    for i, (ns, dev, addr) in enumerate(two_hosts):
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=lctest",
               f"--rdzv-conf=is_host={int(i == 0)},join_timeout=120",
               f"--local-addr={addr}", "-m", "llama_course", "train", "configs/tiny.yaml", "--quiet",
               "--metrics", str(tmp_path / f"node{i}.jsonl")]
        for item in OVER:
            cmd += ["--set", item]
        env = dict(os.environ, GLOO_SOCKET_IFNAME=dev, OMP_NUM_THREADS="1", LLAMA_COURSE_TIMEOUT="60")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=200)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    written = [f for f in (tmp_path / "node0.jsonl", tmp_path / "node1.jsonl") if f.exists()]
    assert len(written) == 1                                  # only global rank 0 writes metrics
    records = [json.loads(line) for line in written[0].read_text().splitlines()]
    single = run_worker(load_config("configs/tiny.yaml", OVER + ["cluster.num_gpus=1"]), quiet=True)
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in single], rel=1e-5)
