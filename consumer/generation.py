"""Which generation a message writes, the switch of readers to a run's generation at its end, and
the retirement of the generation it replaced.

The switch is the last check before readers see a rebuild: every range done and swept (the caller
saw to it), the index caught up with the documents under its prefix and free of indexing failures,
its count what Postgres holds now minus the run's failing drugs, and a canary query answering in
full. Otherwise the alias stays where it is and the run records why.
"""

from functools import partial
from uuid import UUID

from consumer.env import Outcome, SyncEnv, hand_off_walk, out_of_time_for_a_page, retried
from consumer.pacing import Deadline
from shared.errors import ConfigError, GenerationInUse, InvalidMessage, SwitchRefused, UnavailableError
from shared.generations import switch_refusal
from shared.models import RetireMessage
from shared.ports import DocumentStore, Generations, RunProgress

INDEXING_WAIT_SECONDS = 30.0


def run_store(run_id: UUID, env: SyncEnv, deadline: Deadline) -> DocumentStore:
    """The store of the generation the run writes (looked up once per process and run)."""
    gens = env.generations
    if gens is None:
        return env.store
    if run_id in env.run_stores:
        return env.run_stores[run_id]
    progress = retried(env, deadline, lambda: env.ledger.progress(run_id))
    if progress is not None and progress.without_its_generation:
        # Its generation could not be opened: its documents would go to keys no index covers.
        raise InvalidMessage(f"run {run_id} has no generation recorded: it cannot write")
    if progress is None or progress.generation is None:
        return env.store  # a run from before generations (or unknown: its message is refused later)
    generation = retried(env, deadline, gens.read).generations.get(progress.generation)
    if generation is None or generation.state == "retiring":
        # A run that chose its generation just before a rebuild replaced it: its writes would be
        # unlinked by the retirement, or left under a prefix nothing reads.
        raise InvalidMessage(f"run {run_id} writes generation {progress.generation}, which is retired")
    if generation.embedder != env.embedder.name:
        raise ConfigError(
            f"run {run_id} writes generation {generation.number}, embedded by {generation.embedder}, but"
            f" this consumer embeds with {env.embedder.name}: deploy the consumer with the producer's"
            " embedder settings"
        )
    env.run_stores[run_id] = gens.store(generation.number, generation)  # in the generation's layout
    return env.run_stores[run_id]


def needs_switch(progress: RunProgress, env: SyncEnv, deadline: Deadline) -> bool:
    """Whether readers must still be sent to the run's generation before it can finish."""
    gens = env.generations
    if gens is None or progress.generation is None or progress.switched_at is not None:
        return False
    return retried(env, deadline, gens.read).current != progress.generation


def switch_generation(progress: RunProgress, env: SyncEnv, deadline: Deadline) -> bool:
    """Verify the run's generation and send readers to it; True once switched. One caller at a time."""
    gens, run_id, number = env.generations, progress.run_id, progress.generation
    assert gens is not None  # needs_switch said so
    assert number is not None
    if not retried(env, deadline, lambda: env.ledger.claim_switch(run_id, env.claim_seconds)):
        return False
    try:
        generation = retried(env, deadline, gens.read).generations.get(number)
        if generation is None or generation.state != "building":
            refusal: str | None = f"generation {number} was retired (a later rebuild replaced it)"
        else:
            refusal = _refusal(gens, number, progress, env, deadline)
        if refusal is None:
            try:  # the switch checks again, atomically: a rebuild may retire the generation meanwhile
                replaced = retried(env, deadline, lambda: gens.switch(number))
            except SwitchRefused as error:
                refusal = str(error)
        if refusal is not None:
            retried(env, deadline, lambda: env.ledger.record_switch_error(run_id, refusal))
            env.telemetry.count("SwitchesRefused")
            return False
        retried(env, deadline, lambda: env.ledger.mark_switched(run_id))
    except Exception:
        retried(env, deadline, lambda: env.ledger.release_switch(run_id))
        raise
    env.telemetry.count("GenerationsSwitched")
    if replaced is not None:
        body = RetireMessage(run_id=run_id, generation=replaced.number).model_dump_json()
        retried(env, deadline, lambda: env.work_queue.send_messages([body]))
    return True


def _refusal(
    gens: Generations, number: int, progress: RunProgress, env: SyncEnv, deadline: Deadline
) -> str | None:
    """Why the generation may not be switched to; UnavailableError while its index is still catching up."""
    wait = max(0.0, min(INDEXING_WAIT_SECONDS, deadline.remaining_seconds() - env.margin_seconds))
    counts = retried(env, deadline, lambda: gens.counts(number, env.canary_k, wait))
    if counts.indexed + counts.indexing_failures < counts.documents:
        raise UnavailableError(
            f"generation {number}'s index holds {counts.indexed:,} of {counts.documents:,} documents:"
            " still indexing; the switch is tried again"
        )
    # A capped run (only ever the first generation: the producer refuses others) holds what Postgres
    # had in its ranges when each was done.
    # A whole run, every eligible drug now, give or take the drugs edited since the run started (as
    # change capture recorded them): a catalog edited during a rebuild must not hold its switch back.
    capped = retried(env, deadline, lambda: env.ledger.max_drugs(progress.run_id)) is not None
    explained = 0
    if capped:
        eligible = progress.drugs_done + progress.open_failures
    else:
        eligible = retried(env, deadline, env.catalog.count_eligible)
        explained = retried(env, deadline, lambda: env.ledger.changes_during(progress.run_id))
    return switch_refusal(counts, eligible, progress.open_failures, env.canary_k, explained)


def retire(message: RetireMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    """Drop a replaced generation's index (documents kept), then unlink its keys page by page,
    continuing itself before time runs out; the registry forgets it at the end."""
    gens, number = env.generations, message.generation
    if gens is None:
        raise InvalidMessage("a retire message reached a consumer without generations")
    try:  # refused while current, checked again by the drop itself: a switch may land meanwhile
        retried(env, deadline, lambda: gens.drop_index(number))
    except GenerationInUse as error:
        raise InvalidMessage(str(error)) from error
    cursor, server, removed, page_seconds = message.cursor, message.server, 0, 0.0
    while True:
        if out_of_time_for_a_page(page_seconds, env, deadline):
            return hand_off_walk(message, cursor, server, removed, env, deadline)
        began = env.clock()
        now_serving = retried(env, deadline, gens.server_id)
        if server != now_serving:  # a new walk, or a restart: its cursors mean nothing now
            cursor, server = 0, now_serving
        page = partial(gens.unlink_page, number, cursor, env.sweep_page_size)
        cursor, unlinked = retried(env, deadline, page)
        removed += unlinked
        page_seconds = max(env.clock() - began, 1e-6)
        if cursor == 0:
            break
    retried(env, deadline, lambda: gens.forget(number))
    env.telemetry.count("GenerationsRetired")
    return Outcome(0, documents_removed=removed)
