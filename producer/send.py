"""Send a recorded run's messages, recording in the ledger whether they all went."""

import uuid
from collections.abc import Sequence

from shared.describe import describe_error
from shared.errors import DrugSyncError, EnqueueFailed
from shared.ports import Ledger, WorkQueue


def send_run_messages(
    run_id: uuid.UUID, bodies: Sequence[str], *, swept_now: bool, ledger: Ledger, queue: WorkQueue
) -> None:
    """Send a recorded run's messages; on failure record why, and say how to resume."""
    try:
        queue.send_messages(bodies)
    except DrugSyncError as error:
        reason = describe_error(error)
        ledger.record_enqueue_error(run_id, reason)
        raise EnqueueFailed(
            f"run {run_id} is recorded, but its messages could not all be sent ({reason});"
            f" nothing is lost: `drugsync resume {run_id}` sends again every range not done"
        ) from error
    if swept_now:
        ledger.mark_sweep_requested(run_id)
    ledger.mark_enqueued(run_id)
