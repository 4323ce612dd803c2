"""A run's definite end: after its ranges, a sweep; after the sweep, the switch of readers to the
run's generation (if it is not current yet), then one finish and its announcement, with the
retirement of any generation still left retiring.

Any message of the run (a range done now, a redelivered range already done, a sweep, rows back
from the DLQ) calls advance_run, so the end is reached by whoever gets there, and never lost with
the one consumer that happened to mark the last range.
"""

from uuid import UUID

from consumer.env import SyncEnv, retried
from consumer.generation import needs_switch, switch_generation
from consumer.pacing import Deadline
from shared.models import RetireMessage, SweepMessage


def advance_run(run_id: UUID, env: SyncEnv, deadline: Deadline) -> str | None:
    """Take the run's next step if it is due; returns the final state if this call announced it."""
    progress = retried(env, deadline, lambda: env.ledger.progress(run_id))
    if progress is None or not progress.ranges_complete or progress.announced_at is not None:
        return None  # not due yet, or over: a late message costs one read, no claim
    if progress.swept_at is None:
        request_sweep(run_id, env, deadline)
        return None
    # Readers move to the run's generation before it finishes; a refused switch leaves it unfinished.
    switch_due = progress.finished_at is None and needs_switch(progress, env, deadline)
    if switch_due and not switch_generation(progress, env, deadline):
        return None
    if progress.finished_at is None:
        retried(env, deadline, lambda: env.ledger.finish_run(run_id))  # exactly one caller succeeds
    return announce_end(run_id, env, deadline)


def request_sweep(run_id: UUID, env: SyncEnv, deadline: Deadline) -> None:
    """Send the run's one sweep: claimed first, released if the send fails, lapsing if we die."""
    if not retried(env, deadline, lambda: env.ledger.claim_sweep(run_id, env.claim_seconds)):
        return
    body = SweepMessage(run_id=run_id).model_dump_json()
    try:
        retried(env, deadline, lambda: env.work_queue.send_messages([body]))
    except Exception:
        retried(env, deadline, lambda: env.ledger.release_sweep(run_id))
        raise


def announce_end(run_id: UUID, env: SyncEnv, deadline: Deadline) -> str | None:
    """Announce a finished run once; a failed announcement is released so a retry makes it."""
    if not retried(env, deadline, lambda: env.ledger.claim_announcement(run_id, env.claim_seconds)):
        return None
    progress = retried(env, deadline, lambda: env.ledger.progress(run_id))
    assert progress is not None  # claimed above, so the run exists
    try:
        retire_leftovers(run_id, env, deadline)
        env.announcer.announce(progress)
    except Exception:
        retried(env, deadline, lambda: env.ledger.release_announcement(run_id))
        raise
    retried(env, deadline, lambda: env.ledger.mark_announced(run_id))
    return progress.state


def retire_leftovers(run_id: UUID, env: SyncEnv, deadline: Deadline) -> None:
    """Send a Retire for every generation still retiring but not current: one whose Retire was
    lost (a failed send after the switch) or dropped with a superseded run would stay forever.
    Retiring is idempotent, so one sent again (the switch's own, a retried announcement) is harmless."""
    gens = env.generations
    if gens is None:
        return
    leftovers = retried(env, deadline, gens.read).retiring()
    bodies = [RetireMessage(run_id=run_id, generation=g.number).model_dump_json() for g in leftovers]
    if bodies:
        retried(env, deadline, lambda: env.work_queue.send_messages(bodies))
