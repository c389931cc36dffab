"""Every lab executes top to bottom (CI keeps them from rotting).

Each labs/NN_*.ipynb runs with nbclient in labs/ as its working directory, as `jupyter lab labs/` and
scripts/execute_labs.py run it, with a per-cell timeout of 180 s. LLAMA_COURSE_CACHE is left as the
user's, so the tokenizer cache is shared with every other run. Outputs are discarded (notebooks are stored
without them; scripts/execute_labs.py keeps executed copies for the docs).

    pytest tests/test_labs.py                    # all labs
    pytest tests/test_labs.py -k 02_collectives  # one
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"
NOTEBOOKS = sorted(LABS.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_S = 180


@pytest.mark.slow
@pytest.mark.timeout(20 * TIMEOUT_S)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_lab_executes(notebook):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(notebook, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{notebook.name} is stored with outputs; clear them (execute_labs.py keeps executed copies in build/)"
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(LABS)}})
    client.execute()
