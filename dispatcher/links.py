"""Who is on each route: the sessions the dispatcher opened, and which HELLOs may open one.

A HELLO names its credential. The dispatcher derives that credential's key from the cluster key
(or takes the cluster key itself, for a credential with no name), checks the HELLO's signature
with it, and refuses a revoked credential, a role the credential does not hold, or a peer id that
another credential owns. The session it opens belongs to the route the socket assigned (peers
never choose their routing id). The link is *proven* once a message signed in that session
arrives: only then does the peer join (a worker adopts its trials, a client gets its events), so
a HELLO replayed by anyone else opens nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from retia.credentials import Role, derive_key
from retia.session import Session

from .journal import Journal

__all__ = ["Link", "Gate"]

_log = logging.getLogger(__name__)


@dataclass
class Link:
    """One route and its session."""

    identity: bytes
    session: Session
    role: Role
    peer_id: str
    credential: str  # "" for the cluster key
    issued: int
    opened: float = field(default_factory=time.monotonic)
    proven: bool = False  # a message signed in this session came: its HELLO was no replay

    @property
    def privileged(self) -> bool:
        """The cluster key: any role, every client's trials (the head node's own tools)."""
        return not self.credential

    @property
    def sees_all(self) -> bool:
        """It may see every client's trials (retia status): the cluster key or an admin credential."""
        return self.privileged or self.role is Role.ADMIN


class Gate:
    """The keys HELLOs are checked with, and what refuses them: revocations and peer-id owners."""

    def __init__(self, cluster_key: bytes, journal: Journal) -> None:
        self._cluster_key = cluster_key
        self._journal = journal
        self._revoked: dict[str, int] = {}  # name -> credentials issued up to this (ns) are refused
        self._serial = 0
        self.refresh()

    def key_for(self, role: Role, credential: str, issued: int) -> bytes:
        if not credential:
            key: bytes = self._cluster_key
            return key
        return derive_key(self._cluster_key, role, credential, issued)

    def refusal(self, role: Role, peer_id: str, credential: str, issued: int) -> str:
        """Why a HELLO signed with this credential's key may not open a session ("" when it may)."""
        if self._is_revoked(credential, issued):
            return f"credential {credential!r} was revoked; ask the cluster's admin for a new one"
        if role is Role.ADMIN:
            return ""  # sees; owns no peer id
        owner = self._journal.owner(peer_id)
        if owner is not None and owner != credential and credential:
            return (
                f"the {role.value} id {peer_id!r} belongs to another credential; choose another id "
                "(each credential has its own)"
            )
        return ""

    def admit(self, link: Link) -> str:
        """A link joins (its first message in the session came): why it may not after all (another
        credential took its id since its HELLO), else "" and its peer id is its credential's from now
        on, if nobody's yet."""
        refusal = self.refusal(link.role, link.peer_id, link.credential, link.issued)
        if not refusal and link.role is not Role.ADMIN:
            self._journal.bind_owner(link.peer_id, link.credential)  # (an owner already: kept)
        return refusal

    def refresh(self) -> list[tuple[str, int]]:
        """Read revocations recorded since the last call (``retia credential revoke`` writes them to the
        journal, from another process): the (name, issued before) pairs that are new."""
        new = []
        for name, before, serial in self._journal.revoked_after(self._serial):
            self._revoked[name] = before
            self._serial = serial
            new.append((name, before))
            _log.warning("credential %r revoked (those issued before %d)", name, before)
        return new

    def revoked(self, link: Link) -> bool:
        return self._is_revoked(link.credential, link.issued)

    def _is_revoked(self, credential: str, issued: int) -> bool:
        return bool(credential) and issued <= self._revoked.get(credential, -1)
