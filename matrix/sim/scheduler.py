"""Groups that never wait for each other: `simulation.schedule: groups`.

The lock-step engine (`Simulation.step`) runs a round as global phases: every agent acts,
then every modulator routes, and so on, each phase waiting for the slowest request of all
groups. Here every group runs its own steps (a phase of one round, matrix/sim/phases.py)
as soon as what the step reads is ready, so the requests of all groups, and the
independent phases of one group (sharing beside routing; memories, plans and goal checks
beside routing and the summary; the next round's actions beside the summary), are in
flight together up to the backend's concurrency (an OpenAI-compatible server; in-process
backends take one call at a time).

Three parts, each one class with its own state (only the scheduler knows all three):
- when a step starts: `GroupScheduler` (here), the coordinator thread. It starts a step when
  the steps it depends on (`phases.dependencies`, from each phase's reads and writes) are
  done, runs its LLM call on a worker thread and applies its writes when it returns;
- what a step does: `GroupSteps` (matrix/sim/group_steps.py) owns the groups' working state.
  It hands a step a copy of exactly what the phase reads: whatever else the step could see
  (memories, plans, inboxes, a group's memory it does not read) is replaced by a marker,
  `NOT_GIVEN`, so a phase that read something it was not given would send the marker in its
  prompt, not a stale value; the step's writes land back in lock-step order per resource;
- what is committed: `RoundCommits` (matrix/sim/round_commit.py) keeps each group's finished
  rounds and commits a round once every group finished it.

What stays global, and why results equal the lock-step engine's:
- news: a group routes round r's inter-group news after every group has decided, in round
  r-1, whom to tell (`phases.CROSS_GROUP`, the one cross-group dependency); its inbound
  queue is built from those decisions in sender order, as in lock-step;
- rounds are a logical clock: a group's state as of the end of round r is kept when its
  last step of round r is done (a step of round r+1 that changed something first saved
  what round r left there), and when every group has finished round r its rows are
  committed in lock-step order (events by agent, scenarios by group, ids numbered then)
  with a checkpoint of every group's state as of round r. A resumed run restarts every
  group after the last committed round, so resume is exact;
- each call asks what the lock-step call for that group asks, with the same seeds. With a
  backend whose answer depends only on the request (servers, vLLM), the rows are the
  lock-step rows; the in-process HF backend seeds by position in its batch, so there they
  differ from lock-step's but are still reproducible.

A communication mode whose actions reach other groups in the same step
(`Communication.crosses_groups`, e.g. random) cannot run here: no group could move on alone.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from matrix.llm.slots import request_priority
from matrix.sim.engine import Simulation
from matrix.sim.group_steps import GroupSteps, StepOut
from matrix.sim.phases import CROSS_GROUP, PHASES, Step, dependencies, step_priority
from matrix.sim.round_commit import RoundCommits
from matrix.sim.state import SimState

log = logging.getLogger(__name__)


@dataclass
class GroupProgress:
    """A group's progress: started and done steps, and its last finished round."""

    gid: int
    todo: list[Step]  # steps not started yet, in lock-step order
    started: set[Step] = field(default_factory=set)
    done: set[Step] = field(default_factory=set)
    finished_through: int = 0


class GroupScheduler:
    """Runs `sim` with each group's steps started as soon as their inputs are ready;
    returns the last committed state."""

    def __init__(self, sim: Simulation, state: SimState):
        if sim.comm.crosses_groups:
            raise ValueError(
                f"simulation.schedule=groups: communication {sim.comm.mode!r} routes to agents "
                "of every group; use schedule=lockstep with it"
            )
        self.sim = sim
        self.steps = GroupSteps(sim, state)
        self.commits = RoundCommits(sim, state)
        self.first_round = state.round + 1
        cfg = sim.cfg
        self.deps = dependencies(
            self.steps.specs,
            range(self.first_round, cfg.max_rounds + 1),
            cfg.revise_plan_every,
            cfg.goal_check_every,
        )
        self.round_steps: dict[int, set[Step]] = {}
        for step in self.deps:
            self.round_steps.setdefault(step[0], set()).add(step)
        self.groups = {
            g.id: GroupProgress(g.id, list(self.deps), finished_through=state.round)
            for g in state.groups
        }
        self.error: BaseException | None = None
        self.events: queue.Queue[tuple[int, Step, Future]] = queue.Queue()
        self.in_flight = 0
        self.pool: ThreadPoolExecutor | None = None

    @property
    def phase_steps(self) -> int:
        """Every group's steps left to run (the progress display's total)."""
        return len(self.deps) * len(self.groups)

    # -- the run ------------------------------------------------------------------------
    def run(self) -> SimState:
        if self.commits.committed.stopped:
            return self.commits.committed
        for role in ("agent", "summarizer", "modulator"):  # roles are built before threads
            if role in self.sim.roles.cfg.roles:
                self.sim.roles.get(role)
        workers = len(self.groups) * len(PHASES)  # calls wait on the backend's own cap
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step") as pool:
            self.pool = pool
            try:
                self.launch_all()
                while self.in_flight:
                    gid, step, fut = self.events.get()
                    self.in_flight -= 1
                    try:
                        out = fut.result()
                    except BaseException as e:  # let the other calls return, then fail
                        self.error = self.error or e
                        continue
                    if self.error is None and not self.commits.beyond_stop(step[0]):
                        self._apply(gid, step, out)
            except BaseException as e:
                self.error = self.error or e
                while self.in_flight:  # the pool waits for them anyway
                    self.events.get()
                    self.in_flight -= 1
        if self.error is not None:
            raise self.error
        committed = self.commits.committed
        last = self.commits.stop_at if self.commits.stop_at is not None else self.sim.cfg.max_rounds
        if committed.round < last:
            raise RuntimeError(
                f"simulation.schedule=groups: no step could start after round "
                f"{committed.round} (a dependency cycle in matrix/sim/phases.py)"
            )
        return committed

    # -- starting steps -----------------------------------------------------------------
    def launch_all(self) -> None:
        """Start the ready steps of every group (news of a round may free their routes)."""
        for gid in self.groups:
            self._launch(gid)

    def _launch(self, gid: int) -> None:
        """Start every step of `gid` whose inputs are ready (in lock-step order)."""
        g = self.groups[gid]
        progress = True
        while progress and self.error is None:
            progress = False
            for step in list(g.todo):
                if self.commits.beyond_stop(step[0]):
                    break
                if step[0] > g.finished_through + 2:  # two rounds ahead at most
                    break
                if self._ready(g, step):
                    g.todo.remove(step)
                    g.started.add(step)
                    if self._start(g, step):  # done at once: may free later steps
                        progress = True
                        break

    def _ready(self, g: GroupProgress, step: Step) -> bool:
        d = self.deps[step]
        if not (set(d.done) <= g.done and set(d.started) <= g.started):
            return False
        cross = CROSS_GROUP.get(step[1])
        if cross and step[0] > self.first_round:
            return self.steps.news_complete(step[0] - 1)
        return True

    def _start(self, g: GroupProgress, step: Step) -> bool:
        """Prepare the step; submit its call, or apply it now when it has none. Returns
        whether it is already done."""
        call = self.steps.prepare(g.gid, step)
        if call is None:
            self._apply(g.gid, step, StepOut())
            return True
        self.in_flight += 1
        fut = self.pool.submit(_prioritized, step_priority(step), call)
        fut.add_done_callback(lambda f, gid=g.gid: self.events.put((gid, step, f)))
        return False

    # -- a step's results, a group's finished rounds ------------------------------------
    def _apply(self, gid: int, step: Step, out: StepOut) -> None:
        g = self.groups[gid]
        r = step[0]
        if self.steps.apply(gid, step, out, g.finished_through):
            self.launch_all()  # every group may route this round's news
        g.done.add(step)
        self.sim.phase_done(r, f"group {gid} {step[1]}")
        if g.done >= self.round_steps[r] and r == g.finished_through + 1:
            self._finish_round(g, r)
        self._launch(gid)

    def _finish_round(self, g: GroupProgress, r: int) -> None:
        """Keep group `g`'s round r (committing every round all groups have finished), then
        its next round too if that is already done."""
        finished = self.steps.finish(g.gid, r)
        g.finished_through = r
        for q in self.commits.add(g.gid, r, finished, self.steps.news):
            self.steps.news.pop(q - 1, None)  # read by no step any more
        if r + 1 in self.steps.rounds[g.gid] and g.done >= self.round_steps.get(r + 1, {None}):
            self._finish_round(g, r + 1)


def _prioritized(priority: int, call: Callable[[], StepOut]) -> StepOut:
    """Run a step's LLM call (in a worker thread) with its requests marked by `priority`."""
    with request_priority(priority):
        return call()
