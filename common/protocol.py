"""The wire protocol: ``[b"retia/1", signature, header, payload]``, HMAC-signed msgpack.

The signature is HMAC-SHA256 over header and payload with the cluster key, checked with
``hmac.compare_digest`` before a single byte is decoded (as jupyter_client's Session does).
User objects travel inside bodies as opaque ``retia.dump`` bytes: the dispatcher forwards
them and never loads them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, TypeVar

import msgpack

from .errors import AuthenticationError, ProtocolError

__all__ = [
    "VERSION",
    "MsgType",
    "Role",
    "TrialState",
    "Header",
    "Message",
    "Outgoing",
    "Session",
    "Hello",
    "Ready",
    "Welcome",
    "Empty",
    "Run",
    "Report",
    "ReportBatch",
    "RunBatch",
    "DoneBatch",
    "AckBatch",
    "EventBatch",
    "Done",
    "Cancel",
    "Submit",
    "SubmitBatch",
    "Ack",
    "BlobRequest",
    "StateChange",
    "WorkerInfo",
    "StatusReply",
    "FileChunk",
    "BODY_TYPES",
    "batches",
    "DEFAULT_MAX_MESSAGE_BYTES",
]

T = TypeVar("T")
VERSION = b"retia/1"
DEFAULT_MAX_MESSAGE_BYTES = 8 << 20  # big data travels as chunked blobs, never inside one message


class MsgType(IntEnum):
    HELLO = 1  # peer -> dispatcher: who I am (worker or client), what I still run / have seen
    WELCOME = 2  # dispatcher -> peer: heartbeat settings
    READY = 3  # worker -> dispatcher: idle, send me a trial
    RUN = 4  # dispatcher -> worker: run this trial attempt
    REPORT = 5  # worker -> dispatcher (seq = report seq); dispatcher -> client (seq = event seq)
    DONE = 6  # worker -> dispatcher: the attempt ended
    HEARTBEAT = 7  # both ways
    CANCEL = 8  # client -> dispatcher -> worker
    SUBMIT = 9  # client -> dispatcher: a new trial
    ACK = 10  # dispatcher -> sender: stored (SUBMIT, REPORT, DONE, FILE)
    STATE = 11  # dispatcher -> client (seq = event seq): a trial changed state
    STATUS = 12  # anyone -> dispatcher: what are you doing
    STATUS_REPLY = 13
    SHUTDOWN = 14  # dispatcher -> worker: exit
    BYE = 15  # peer -> dispatcher: leaving on purpose
    RESET = 16  # dispatcher -> unknown peer: say HELLO again
    FILE = 17  # worker -> dispatcher: a chunk of a trial artefact
    BLOB_PUT = 18  # client -> dispatcher: a chunk of a blob (path = digest)
    BLOB_GET = 19  # worker -> dispatcher: send me this range of a blob
    BLOB_DATA = 20  # dispatcher -> worker: a chunk of a blob (path = digest)
    REPORTS = 21  # worker -> dispatcher: several reports of one attempt (header seq = the last one)
    ACKS = 22  # dispatcher -> sender: the acknowledgements one batch produced, in one message
    EVENTS = 23  # dispatcher -> client: the REPORT and STATE events one batch produced, in order
    RUNS = 24  # dispatcher -> worker: several RUNs in one message (a worker that holds trials, --prefetch)
    DONES = 25  # worker -> dispatcher: several DONEs in one message, each acknowledged on its own
    SUBMITS = 26  # client -> dispatcher: several SUBMITs in one message, each acknowledged on its own


class Role(str, Enum):
    WORKER = "worker"
    CLIENT = "client"


class TrialState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (TrialState.SUCCEEDED, TrialState.FAILED, TrialState.CANCELLED)


@dataclass(frozen=True)
class Header:
    type: MsgType
    trial: str = ""
    attempt: int = 0
    seq: int = 0
    sender: str = ""
    time: float = 0.0


# ---- bodies: each a dataclass sent as a msgpack array of its fields, in order ----


@dataclass(frozen=True)
class Empty:
    """Body of READY, HEARTBEAT, SHUTDOWN, BYE, RESET, STATUS."""


@dataclass(frozen=True)
class Hello:
    role: str
    peer_id: str
    host: str = ""
    pid: int = 0
    gpu: str = ""
    running: list[list[Any]] = field(default_factory=list)  # [[trial, attempt], ...] still running
    last_event: int = 0  # clients: highest event seq already received
    version: str = ""
    prefetch: int = 0  # workers: how many trials it holds beyond the one it runs


@dataclass(frozen=True)
class Ready:
    last_run: str = ""  # the last trial this worker was given: a READY sent before a RUN arrived is stale


@dataclass(frozen=True)
class Welcome:
    heartbeat_interval: float
    liveness: int
    dispatcher_id: str


@dataclass(frozen=True)
class Run:
    evaluator: bytes
    model: bytes
    timeout: float | None = None
    name: str = ""
    max_artifact_bytes: int = 50 << 20
    blobs: list[list[Any]] = field(default_factory=list)  # [[digest, size], ...] the payload references


@dataclass(frozen=True)
class RunBatch:
    items: list[list[Any]]  # [[trial, attempt, evaluator, model, timeout, name, blobs], ...] in order

    def messages(self, sender: str = "") -> list[Message]:
        """Each item as the RUN message it stands for."""
        return [
            Message(
                Header(MsgType.RUN, str(t), int(a), 0, sender), Run(e, m, timeout, name, blobs=list(blobs))
            )
            for t, a, e, m, timeout, name, blobs in self.items
        ]


@dataclass(frozen=True)
class Report:
    final: bool
    value: float | dict[str, float]


@dataclass(frozen=True)
class ReportBatch:
    items: list[list[Any]]  # [[seq, final, value], ...] in order


@dataclass(frozen=True)
class Done:
    """The attempt ended. It also says the worker is free, and carries the reports still unsent."""

    state: str
    reason: str = ""
    exc_type: str = ""
    message: str = ""
    traceback: str = ""
    log_tail: str = ""
    duration: float = 0.0
    reports: list[list[Any]] = field(
        default_factory=list
    )  # [[seq, final, value], ...], stored before the outcome
    files: list[list[Any]] = field(
        default_factory=list
    )  # [[relative path, bytes], ...]: small artefacts, inline


@dataclass(frozen=True)
class DoneBatch:
    items: list[list[Any]]  # [[trial, attempt, seq, [Done fields...]], ...]

    @classmethod
    def of(cls, dones: list[tuple[str, int, int, Done]]) -> DoneBatch:
        return cls([[trial, attempt, seq, _to_wire(done)] for trial, attempt, seq, done in dones])

    def messages(self, sender: str = "") -> list[Message]:
        """Each item as the DONE message it stands for."""
        return [
            Message(Header(MsgType.DONE, str(t), int(a), int(s), sender), Done(*fields))
            for t, a, s, fields in self.items
        ]


@dataclass(frozen=True)
class Cancel:
    reason: str = "cancelled"
    give_back: bool = (
        False  # dispatcher -> worker: return it unstarted (DONE with state QUEUED); if it runs, run on
    )


@dataclass(frozen=True)
class Submit:
    evaluator: bytes
    model: bytes
    arch: Any = None  # JSON-able architecture dict, kept for bookkeeping only
    timeout: float | None = None
    max_retries: int = 2
    name: str = ""
    blobs: list[list[Any]] = field(default_factory=list)  # [[digest, size], ...], uploaded before


@dataclass(frozen=True)
class SubmitBatch:
    items: list[list[Any]]  # [[trial, seq, [Submit fields...]], ...]

    @classmethod
    def of(cls, submits: list[tuple[str, int, Submit]]) -> SubmitBatch:
        return cls([[trial, seq, _to_wire(sub)] for trial, seq, sub in submits])

    def messages(self, sender: str = "") -> list[Message]:
        """Each item as the SUBMIT message it stands for."""
        return [
            Message(Header(MsgType.SUBMIT, str(t), 0, int(s), sender), Submit(*fields))
            for t, s, fields in self.items
        ]


@dataclass(frozen=True)
class BlobRequest:
    digest: str
    offset: int
    length: int


@dataclass(frozen=True)
class Ack:
    ok: bool = True
    reason: str = ""


@dataclass(frozen=True)
class AckBatch:
    items: list[list[Any]]  # [[trial, attempt, seq], ...]: each stored, as a positive ACK would say


@dataclass(frozen=True)
class EventBatch:
    items: list[list[Any]]  # [[type, trial, attempt, event seq, packed body], ...] in event order


@dataclass(frozen=True)
class StateChange:
    state: str
    attempt: int
    worker: str = ""
    reason: str = ""
    exc_type: str = ""
    message: str = ""
    traceback: str = ""
    log_tail: str = ""
    output_dir: str = ""


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    host: str
    gpu: str
    pid: int
    state: str
    trial: str
    uptime: float


@dataclass(frozen=True)
class StatusReply:
    dispatcher_id: str
    workers: list[WorkerInfo]
    counts: dict[str, int]
    uptime: float
    bytes_sent: int = 0


@dataclass(frozen=True)
class FileChunk:
    path: str  # relative to the trial's output directory
    offset: int
    data: bytes
    last: bool


BODY_TYPES: dict[MsgType, type] = {
    MsgType.HELLO: Hello,
    MsgType.WELCOME: Welcome,
    MsgType.READY: Ready,
    MsgType.RUN: Run,
    MsgType.REPORT: Report,
    MsgType.DONE: Done,
    MsgType.HEARTBEAT: Empty,
    MsgType.CANCEL: Cancel,
    MsgType.SUBMIT: Submit,
    MsgType.ACK: Ack,
    MsgType.STATE: StateChange,
    MsgType.STATUS: Empty,
    MsgType.STATUS_REPLY: StatusReply,
    MsgType.SHUTDOWN: Empty,
    MsgType.BYE: Empty,
    MsgType.RESET: Empty,
    MsgType.FILE: FileChunk,
    MsgType.BLOB_PUT: FileChunk,
    MsgType.BLOB_GET: BlobRequest,
    MsgType.BLOB_DATA: FileChunk,
    MsgType.REPORTS: ReportBatch,
    MsgType.ACKS: AckBatch,
    MsgType.EVENTS: EventBatch,
    MsgType.RUNS: RunBatch,
    MsgType.DONES: DoneBatch,
    MsgType.SUBMITS: SubmitBatch,
}


@dataclass(frozen=True)
class Outgoing:
    """A message kept until acknowledged; signed afresh on every send, so a re-send is no replay."""

    type: MsgType
    body: Any
    trial: str = ""
    attempt: int = 0
    seq: int = 0

    def frames(self, session: Session) -> list[bytes]:
        return session.frames(self.type, self.body, trial=self.trial, attempt=self.attempt, seq=self.seq)


@dataclass(frozen=True)
class Message:
    header: Header
    body: Any
    payload: bytes = b""  # the packed body, for relaying without re-encoding

    @property
    def type(self) -> MsgType:
        return self.header.type


def batches(items: list[T], size: Callable[[T], int], max_items: int, max_bytes: int) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` for batch messages: at most ``max_items``, closed once ``max_bytes`` is reached."""
    start, total = 0, 0
    for i, item in enumerate(items):
        total += size(item)
        if i + 1 == len(items) or i + 1 - start == max_items or total >= max_bytes:
            yield items[start : i + 1]
            start, total = i + 1, 0


def _to_wire(body: Any) -> list[Any]:
    if body is None:
        return []
    if isinstance(body, StatusReply):
        return [
            body.dispatcher_id,
            [dataclasses.astuple(w) for w in body.workers],
            body.counts,
            body.uptime,
            body.bytes_sent,
        ]
    return [getattr(body, name) for name in _field_names(type(body))]


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    """A body's fields in wire order (``dataclasses.fields`` is too slow for every message)."""
    return tuple(f.name for f in dataclasses.fields(cls))


def _from_wire(cls: type, values: list[Any]) -> Any:
    if cls is StatusReply:
        dispatcher_id, workers, counts, uptime, bytes_sent = values
        return StatusReply(dispatcher_id, [WorkerInfo(*w) for w in workers], counts, uptime, bytes_sent)
    return cls(*values)


_DECODE_ERRORS = (ValueError, TypeError, KeyError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError)


class Session:
    """Signs, frames, checks and decodes messages for one peer (as jupyter_client's Session)."""

    def __init__(
        self,
        key: bytes,
        sender: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reject_replays: bool = False,
        history: int = 1 << 17,
    ) -> None:
        if not key:
            raise AuthenticationError("a cluster key is required: signing cannot be turned off")
        self._key = key
        self.sender = sender
        self.max_message_bytes = max_message_bytes
        self._reject_replays = reject_replays
        self._seen: set[bytes] = set()
        self._seen_order: deque[bytes] = deque(maxlen=history)

    def sign(self, header: bytes, payload: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(header)
        mac.update(payload)
        return mac.digest()

    def frames(
        self, type: MsgType, body: Any = None, *, trial: str = "", attempt: int = 0, seq: int = 0
    ) -> list[bytes]:
        """Serialize and sign one message."""
        return self.frames_raw(type, self.pack_body(body), trial=trial, attempt=attempt, seq=seq)

    def frames_raw(
        self, type: MsgType, payload: bytes, *, trial: str = "", attempt: int = 0, seq: int = 0
    ) -> list[bytes]:
        """Sign an already-packed payload (the dispatcher relays report payloads untouched)."""
        header = msgpack.packb([int(type), trial, attempt, seq, self.sender, time.time()], use_bin_type=True)
        return [VERSION, self.sign(header, payload), header, payload]

    @staticmethod
    def pack_body(body: Any) -> bytes:
        return msgpack.packb(_to_wire(body), use_bin_type=True)

    def parse(self, frames: list[bytes]) -> Message:
        """Check and decode; raises ProtocolError or AuthenticationError without decoding bad input."""
        if len(frames) != 4:
            raise ProtocolError(f"expected 4 frames, got {len(frames)}")
        version, signature, header, payload = frames
        if version != VERSION:
            raise ProtocolError(f"protocol version {bytes(version[:16])!r}, expected {VERSION!r}")
        size = len(header) + len(payload)
        if size > self.max_message_bytes:
            raise ProtocolError(f"message of {size} bytes exceeds the {self.max_message_bytes}-byte limit")
        if not hmac.compare_digest(self.sign(header, payload), signature):
            raise AuthenticationError("bad signature: wrong cluster key or tampered message")
        if self._reject_replays:
            self._remember(bytes(signature))
        try:
            type_, trial, attempt, seq, sender, sent = msgpack.unpackb(header, raw=False)
        except _DECODE_ERRORS as exc:
            raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc
        return self.decode(type_, trial, attempt, seq, bytes(payload), sender, sent)

    @staticmethod
    def decode(
        type_: int, trial: str, attempt: int, seq: int, payload: bytes, sender: str = "", sent: float = 0.0
    ) -> Message:
        """Decode one message whose bytes were already checked (also each item of an EVENTS batch)."""
        try:
            msg_type = MsgType(type_)
            values = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            body = _from_wire(BODY_TYPES[msg_type], values)
            header = Header(msg_type, str(trial), int(attempt), int(seq), str(sender), float(sent))
            return Message(header, body, payload)
        except _DECODE_ERRORS as exc:
            raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc

    def _remember(self, signature: bytes) -> None:
        """Refuse a signature seen before (as jupyter_client's digest history does)."""
        if signature in self._seen:
            raise AuthenticationError("replayed message: this signature was seen before")
        if len(self._seen_order) == self._seen_order.maxlen:
            self._seen.discard(self._seen_order[0])
        self._seen_order.append(signature)
        self._seen.add(signature)
