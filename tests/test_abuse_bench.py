"""bench/abuse.py in its reduced form (`--quick`): every attack of issue 12 against a real server, each answered
as expected (its exit status), over the tiny weights so that it runs in under a minute."""
import subprocess
import sys

import pytest

from tests.test_e2e import REPO_ROOT

pytestmark = pytest.mark.slow


def test_every_attack_is_answered_as_expected(tiny_weights_dir):
    run = subprocess.run([sys.executable, "-m", "bench.abuse", "--quick", "--weights-dir", str(tiny_weights_dir)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    print(run.stdout)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-6000:]}"
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| attack")]
    assert len(rows) >= 20 and all(line.endswith("| pass |") for line in rows), run.stdout
