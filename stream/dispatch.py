"""Credit-based dispatch: which worker gets the next job (pure: no sockets; times are passed in).

Workers connect a DEALER to serve's job ROUTER and announce themselves there (``wire.encode_ready``: worker
id, pid and credits = how many jobs they may hold at once); the ROUTER names each connection by a routing id,
a :class:`Route` here. serve grants ``min(credits, scale_out.in_flight_per_worker_jobs)`` and sends a job only
to a route with a free credit. What a route holds is counted by serve itself (the collector's jobs sent to it
and not answered yet, including jobs the reorder policy passed that the worker still computes), so a result
hands a credit back, and a worker that takes jobs and never answers holds its credits until
``scale_out.result_timeout_s`` and gets nothing more meanwhile. A slow worker therefore holds only its own
credits and never delays what the others take. Among routes with a free credit the one that waited longest
since its last job gets the next one, so equal workers share the work.

Bounds: at most ``max_routes`` connections are known at once (a ready announcement from one more is ignored
and logged). A route is forgotten when its worker is lost (exited or silent), when a send finds it
disconnected, or when the same worker process (same id and pid) announces itself on a new connection.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from spikereveal.stream.wire import Ready

__all__ = ["Route", "WorkerRoutes", "MAX_ROUTES"]

logger = logging.getLogger(__name__)

#: the most worker connections serve knows at once (each may hold up to in_flight_per_worker_jobs jobs)
MAX_ROUTES = 64


@dataclass
class Route:
    """One worker connection on the job ROUTER."""

    identity: bytes  # the ROUTER's routing id of the connection
    worker_id: int
    pid: int
    credits: int  # what serve grants: min(the worker's credits, in_flight_per_worker_jobs)
    announced_ns: int
    last_sent_ns: int = -1  # when it was last sent a job (-1: never)


class WorkerRoutes:
    """The worker connections serve may send jobs to, and their credits.

    ``max_credits``: ``scale_out.in_flight_per_worker_jobs``, the cap on what one worker may hold."""

    def __init__(self, max_credits: int, max_routes: int = MAX_ROUTES):
        if max_credits < 1 or max_routes < 1:
            raise ValueError("max_credits and max_routes must be at least 1")
        self.max_credits = max_credits
        self.max_routes = max_routes
        self._routes: OrderedDict[bytes, Route] = OrderedDict()
        self.refused = 0  # ready announcements ignored because max_routes connections were known
        self._warned_ids: set[int] = set()

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, identity: bytes) -> bool:
        return identity in self._routes

    def get(self, identity: bytes) -> Route | None:
        return self._routes.get(identity)

    @property
    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def announce(self, identity: bytes, ready: Ready, now_ns: int) -> tuple[Route | None, bool]:
        """A ready announcement from ``identity``: ``(its route, True when it is new)``; ``(None, False)`` when
        ``max_routes`` connections are known already (counted in ``refused``)."""
        route = self._routes.get(identity)
        if route is not None:
            route.credits = min(ready.credits, self.max_credits)
            return route, False
        if len(self._routes) >= self.max_routes:
            self.refused += 1
            if self.refused == 1:
                logger.warning("worker %d (pid %d) announced itself but serve already knows %d worker connections "
                               "(the bound): it gets no jobs", ready.worker_id, ready.pid, self.max_routes)
            return None, False
        for other in list(self._routes.values()):
            if other.worker_id != ready.worker_id:
                continue
            if other.pid == ready.pid:  # the same process on a new connection (it reconnected): the old one is gone
                del self._routes[other.identity]
            elif ready.worker_id not in self._warned_ids:
                self._warned_ids.add(ready.worker_id)
                logger.warning("two workers announce the id %d (pids %d and %d): serve tells workers apart by id "
                               "for heartbeats and lost jobs; give each 'spikereveal worker' its own --id",
                               ready.worker_id, other.pid, ready.pid)
        route = Route(identity, ready.worker_id, ready.pid, min(ready.credits, self.max_credits), now_ns)
        self._routes[identity] = route
        return route, True

    def forget(self, identity: bytes) -> Route | None:
        return self._routes.pop(identity, None)

    def forget_worker(self, worker_id: int) -> int:
        """Forget every connection of ``worker_id`` (it was declared lost); returns how many."""
        gone = [identity for identity, route in self._routes.items() if route.worker_id == worker_id]
        for identity in gone:
            del self._routes[identity]
        return len(gone)

    def pick(self, held: Callable[[bytes], int]) -> Route | None:
        """The route to send the next job to: one with a free credit (``held(identity)``: jobs it holds now),
        the one whose last job is oldest; None when no route has a free credit."""
        best = None
        for route in self._routes.values():
            if held(route.identity) >= route.credits:
                continue
            if best is None or route.last_sent_ns < best.last_sent_ns:
                best = route
        return best

    def sent(self, identity: bytes, now_ns: int) -> None:
        route = self._routes.get(identity)
        if route is not None:
            route.last_sent_ns = now_ns
