"""The nemesis, short: about two minutes of seeded faults on three real nodes under load.

Three `failover worker` nodes, each behind its own database and broker proxies, handle files
streaming into a hot folder and run a script on an interval, while a seeded schedule strikes:
at least one `kill -9` of a worker's main process alone (whatever it started may live on)
and one partition, among others. The witness (`tests/nemesis/witness.py`) holds a lock per
file and per script while anything it started lives; the checker reads its history and the
ledgers. To repeat a failure: `python -m tests.benchmarks.nemesis --seed SEED --faults 24`.
"""

from __future__ import annotations

import pytest

from tests.nemesis.run import run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
SEED = 4
FAULTS = 24


def test_no_overlap_loss_or_double_run_under_a_short_nemesis(tmp_path, database_url, broker_url):
    # Given three nodes under load, when a seeded schedule of faults strikes (a kill -9 of a
    # main process alone and a partition among them) and then everything heals
    outcome = run(
        SEED, FAULTS, tmp_path, database_url, broker_url, required=("killmain", "partition")
    )
    # Then the harness did its part (every wait it made came true)
    assert outcome.notes == [], "\n".join(["harness problems:", *outcome.notes, outcome.text])
    # And no two runs of a file or script overlapped, nothing was lost or run twice
    assert outcome.violations == [], outcome.text
