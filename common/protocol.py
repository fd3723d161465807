"""The wire protocol: ``[b"retia/3", signature, header, payload]``, HMAC-signed msgpack.

The signature is HMAC-SHA256 over header and payload with the session's key, checked with
``hmac.compare_digest`` before a single byte is decoded (see :mod:`retia.session`, which also
keys the session with the HELLO/WELCOME handshake). Every body is a dataclass below, decoded
by :mod:`retia.codec`, which checks each field; a message that does not fit is refused with a
``ProtocolError`` naming the field.

Control messages (HELLO, CANCEL, FILE, ...) carry one body. Data travels only as batches of
typed items, one kind per message type, so each kind has one sender and one receiver:

    SUBMITS  client -> dispatcher   list[Submit]   acknowledged item by item
    RUNS     dispatcher -> worker   list[Run]
    REPORTS  worker -> dispatcher   list[Report]   acknowledged by its last item
    DONES    worker -> dispatcher   list[Done]     acknowledged item by item
    ACKS     dispatcher -> sender   list[Ack]
    EVENTS   dispatcher -> client   list[Event]    each with its event seq

User objects travel inside bodies as opaque ``retia.dump`` bytes, a metric as the msgpack
bytes the trial packed: the dispatcher stores and relays them and never loads them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgpack

from .codec import Bounds, Json, NonNegative
from .credentials import Role
from .errors import ProtocolError
from .failure import Failure
from .reporting import Metric, validate_metric
from .seeding import SEED_MAX

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "VERSION",
    "MsgType",
    "Role",
    "TrialState",
    "Header",
    "Message",
    "Outgoing",
    "Empty",
    "Heartbeat",
    "Reset",
    "Refused",
    "Hello",
    "Welcome",
    "Ready",
    "Cancel",
    "TrialAttempt",
    "BlobRef",
    "FileChunk",
    "BlobRequest",
    "WorkerInfo",
    "StatusReply",
    "Submit",
    "Run",
    "Mate",
    "Report",
    "InlineFile",
    "Done",
    "Ack",
    "StateChange",
    "Event",
    "SubmitBatch",
    "RunBatch",
    "ReportBatch",
    "DoneBatch",
    "AckBatch",
    "EventBatch",
    "BODY_TYPES",
    "batches",
    "kept_frames",
    "item_bytes",
    "pack_metric",
    "unpack_metric",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_PREFETCH",
    "MAX_PACK",
    "MAX_TRIAL_GPUS",
    "GpuCount",
    "DeviceFacts",
    "CHECKPOINT_SEQ",
    "id_problem",
]

T = TypeVar("T")
VERSION = b"retia/3"  # 3: sessions (HELLO/WELCOME nonces, per-direction keys, message numbers)
DEFAULT_MAX_MESSAGE_BYTES = 8 << 20  # big data travels as chunked blobs, never inside one message
MAX_PREFETCH = 64  # trials a worker may hold beyond the one it runs
MAX_PACK = 64  # trials one RUN may carry (retia.packing): itself and its mates
MAX_TRIAL_GPUS = 64  # the most GPUs one trial may ask for
# CHECKPOINT chunks are numbered from here in their attempt, apart from its reports, FILEs and DONE
CHECKPOINT_SEQ = 1 << 48
_CHUNK_LIMIT = 8 << 20  # the most bytes a BLOB_GET may ask for (the dispatcher sends at most 1 MiB)
_NONCE_BYTES = 32
_DIGEST = re.compile(r"[0-9a-f]{64}")
# trial and peer ids name files and directories on workers and the head node
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def id_problem(value: object, what: str) -> str:
    """Why ``value`` cannot be a trial or peer id ("" when it can)."""
    if isinstance(value, str) and _ID.fullmatch(value):
        return ""
    return (
        f"{what} must be 1-128 letters, digits, '_', '-' or '.' (not first), as it names files; "
        f"got {value!r:.80}"
    )


class MsgType(IntEnum):
    HELLO = 1  # peer -> dispatcher: who I am (worker or client), what I still run / have seen
    WELCOME = 2  # dispatcher -> peer: heartbeat settings
    READY = 3  # worker -> dispatcher: idle, send me a trial
    HEARTBEAT = 7  # both ways
    CANCEL = 8  # client -> dispatcher -> worker (header: trial, attempt)
    STATUS = 12  # anyone -> dispatcher: what are you doing
    STATUS_REPLY = 13
    SHUTDOWN = 14  # dispatcher -> worker: exit
    BYE = 15  # peer -> dispatcher: leaving on purpose
    RESET = 16  # dispatcher -> unknown peer: say HELLO again
    FILE = 17  # worker -> dispatcher: a chunk of a trial artefact (header: trial, attempt, seq)
    BLOB_PUT = 18  # client -> dispatcher: a chunk of a blob (path = digest)
    BLOB_GET = 19  # worker -> dispatcher: send me this range of a blob
    BLOB_DATA = 20  # dispatcher -> worker: a chunk of a blob (path = digest)
    REPORTS = 21  # worker -> dispatcher: reports, in order
    ACKS = 22  # dispatcher -> sender: what one loop turn stored (or refused)
    EVENTS = 23  # dispatcher -> client: report and state events, in event order
    RUNS = 24  # dispatcher -> worker: trial attempts to run (or hold, with --prefetch)
    DONES = 25  # worker -> dispatcher: attempts that ended
    SUBMITS = 26  # client -> dispatcher: new trials
    REFUSED = 27  # dispatcher -> peer: its HELLO or its session is refused (revoked, not its id)
    # worker -> dispatcher: a chunk of the attempt's latest checkpoint (path = its digest; header:
    # trial, attempt, seq from CHECKPOINT_SEQ on), kept for the trial's next attempt once complete
    CHECKPOINT = 28


class TrialState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (TrialState.SUCCEEDED, TrialState.FAILED, TrialState.CANCELLED)


Seq = NonNegative
Attempt = NonNegative
Seconds = Annotated[float, Bounds(0.0, None)]
Seed = Annotated[int, Bounds(0, SEED_MAX)]  # a trial's seed (retia.seeding): the same one on every attempt
# GPUs a trial asks for: None, what its worker has; 0, none (CPU); N, N of a worker that has at least N
GpuCount = Annotated[int, Bounds(0, MAX_TRIAL_GPUS)]


@dataclass(frozen=True)
class Header:
    type: MsgType
    trial: str = ""
    attempt: Attempt = 0
    seq: Seq = 0
    sender: str = ""
    time: float = 0.0
    counter: NonNegative = 0  # the message's number in its session and direction (replays are refused)


# ---- control bodies ----


@dataclass(frozen=True)
class Empty:
    """Body of commands that carry nothing: SHUTDOWN, BYE, STATUS."""


@dataclass(frozen=True)
class Heartbeat:
    """Both ways; to a client it also says the last of its events sent before it, so a client
    whose last events were lost (and that hears of no later one) still sees the gap."""

    last_event: Seq = 0


@dataclass(frozen=True)
class Reset:
    """ "Say HELLO again", answering a message from a peer the dispatcher does not know; ``sent`` is
    that message's header time, so a peer can tell a RESET for what it sent before its last HELLO."""

    sent: float = 0.0


@dataclass(frozen=True)
class Refused:
    """Why the dispatcher will not serve this peer (its credential was revoked, say): do not retry."""

    reason: str


@dataclass(frozen=True)
class TrialAttempt:
    trial: str
    attempt: Attempt


@dataclass(frozen=True)
class Hello:
    role: Role
    peer_id: str
    host: str = ""
    pid: NonNegative = 0
    gpu: str = ""
    running: list[TrialAttempt] = field(default_factory=list)  # workers: still running or held, in order
    last_event: Seq = 0  # clients: highest event seq already received
    prefetch: Annotated[int, Bounds(0, MAX_PREFETCH)] = 0  # workers: trials held beyond the running one
    # the largest message this peer accepts: the dispatcher sizes what it sends to fit
    max_message_bytes: Annotated[int, Bounds(1024, None)] = DEFAULT_MAX_MESSAGE_BYTES
    credential: str = ""  # the credential's name ("" for the cluster key), which keys the signature
    issued: NonNegative = 0  # and when it was issued (ns)
    nonce: bytes = b""  # fresh for every HELLO: the session's key depends on it

    def check(self) -> str:
        if len(self.nonce) != _NONCE_BYTES:
            return f"a HELLO needs a {_NONCE_BYTES}-byte nonce (got {len(self.nonce)} bytes)"
        if self.credential and (problem := id_problem(self.credential, "a credential name")):
            return problem
        return id_problem(self.peer_id, "a peer id")


@dataclass(frozen=True)
class Welcome:
    heartbeat_interval: float
    liveness: int
    dispatcher_id: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # the largest message the dispatcher accepts
    nonce: bytes = b""  # the dispatcher's half of the session key


@dataclass(frozen=True)
class Ready:
    last_run: str = ""  # the last trial this worker was given: a READY sent before a RUN arrived is stale
    # set: the worker takes no trial until a READY without it (a GPU still holds memory after its last
    # trial); what it holds comes back unstarted
    blocked: str = ""


@dataclass(frozen=True)
class Cancel:
    reason: str = "cancelled"
    # dispatcher -> worker: return it unstarted (DONE with state QUEUED); if it runs, run on
    give_back: bool = False


@dataclass(frozen=True)
class BlobRef:
    """A large argument a payload references, stored by content."""

    digest: str
    size: NonNegative

    def check(self) -> str:
        return (
            ""
            if _DIGEST.fullmatch(self.digest)
            else f"blob digest {self.digest[:80]!r} is not 64 hex digits (BLAKE2b-256)"
        )


@dataclass(frozen=True)
class FileChunk:
    path: str  # relative to the trial's output directory (FILE), or a blob digest (BLOB_PUT, BLOB_DATA)
    offset: NonNegative
    data: bytes
    last: bool


@dataclass(frozen=True)
class BlobRequest:
    digest: str
    offset: NonNegative
    length: Annotated[int, Bounds(1, _CHUNK_LIMIT)]


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    host: str
    gpu: str
    pid: int
    state: str
    trial: str
    uptime: float
    last_trial: str = ""  # the last trial it finished, and what that trial's GPUs did
    last_devices: DeviceFacts | None = None
    blocked: str = ""  # why it takes no trial now (state "blocked"), e.g. GPU memory held after a trial


@dataclass(frozen=True)
class StatusReply:
    dispatcher_id: str
    workers: list[WorkerInfo]
    counts: dict[str, int]
    uptime: float
    bytes_sent: int = 0


# ---- data items, each travelling in a batch ----


@dataclass(frozen=True)
class Submit:
    """A new trial (client -> dispatcher); ``seq`` is the client's, for the acknowledgement."""

    trial: str
    seq: Seq
    evaluator: bytes
    model: bytes
    arch: Json = None  # JSON-able architecture dict, kept for bookkeeping only
    timeout: Seconds | None = None
    max_retries: Annotated[int, Bounds(0, 1000)] = 2
    name: str = ""
    blobs: list[BlobRef] = field(default_factory=list)  # uploaded before
    seed: Seed | None = None  # None: the dispatcher gives it ``trial_seed(trial)``
    # the most trials it may train with in one process, itself included (retia.packing): trials of
    # one client whose evaluators are the same bytes pack together
    pack: Annotated[int, Bounds(1, MAX_PACK)] = 1
    gpus: GpuCount | None = None  # placed on a worker with at least this many GPUs; it sees that many

    def check(self) -> str:
        return id_problem(self.trial, "a trial id")


@dataclass(frozen=True)
class Run:
    """One attempt of a trial for a worker to run (dispatcher -> worker)."""

    trial: str
    attempt: Attempt
    evaluator: bytes
    model: bytes
    timeout: Seconds | None = None
    name: str = ""
    max_artifact_bytes: NonNegative = 50 << 20
    blobs: list[BlobRef] = field(default_factory=list)
    # the checkpoint a previous attempt left (one of ``blobs``): the trial starts from it
    resume: BlobRef | None = None
    seed: Seed | None = None  # the trial's, on every attempt: the trial runs under it (None: unseeded)
    # a pack: trials trained with this one in its process, on its evaluator (their blobs are in ``blobs``)
    mates: list[Mate] = field(default_factory=list)
    gpus: GpuCount | None = None  # of the worker's GPUs, how many the trial sees (None: all of them)

    def check(self) -> str:
        if self.resume is not None and self.resume not in self.blobs:
            return "a RUN's resume checkpoint must be one of its blobs"
        if len(self.mates) >= MAX_PACK:
            return f"a pack carries at most {MAX_PACK} trials, this RUN {1 + len(self.mates)}"
        if self.mates and self.resume is not None:
            return "a pack does not resume from a checkpoint"
        if len({self.trial, *(mate.trial for mate in self.mates)}) != 1 + len(self.mates):
            return "the trials of a pack must be distinct"
        return id_problem(self.trial, "a trial id")


@dataclass(frozen=True)
class Mate:
    """A trial riding in another's RUN (a pack): it shares that RUN's evaluator and process, and
    has its own attempt, model, seed, timeout, reports, result and output directory."""

    trial: str
    attempt: Attempt
    model: bytes
    seed: Seed | None = None
    timeout: Seconds | None = None
    name: str = ""

    def check(self) -> str:
        return id_problem(self.trial, "a trial id")


@dataclass(eq=True)
class Report:
    """One ``report_*_result`` of an attempt; ``value`` is the metric as the trial packed it.

    Not frozen, as Event is not: one is built per report on every hop, and a frozen
    dataclass's ``__init__`` costs three times as much (docs/benchmarks.md). Treat as read-only."""

    trial: str
    attempt: Attempt
    seq: Seq
    final: bool
    value: bytes

    @functools.cached_property
    def metric(self) -> Metric:
        """The metric (unpacked once; ProtocolError when the bytes are not one)."""
        return unpack_metric(self.value)


@dataclass(frozen=True)
class InlineFile:
    """A small artefact riding inside its DONE."""

    path: str
    data: bytes


@dataclass(frozen=True)
class DeviceFacts:
    """A trial's GPUs and what it did with them: which (``gpus``, as its worker numbers them;
    ``uuids``, once CUDA was up), its peak allocated memory (``torch.cuda.max_memory_allocated``,
    the largest of its devices) and how long after its start its first CUDA operation came (None:
    it never initialized CUDA)."""

    gpus: list[str] = field(default_factory=list)
    uuids: list[str] = field(default_factory=list)
    peak_memory_bytes: NonNegative = 0
    first_cuda_s: Seconds | None = None


@dataclass(frozen=True)
class Done:
    """The attempt ended. It also says the worker is free, and carries the reports still unsent.

    ``state`` QUEUED means given back unstarted; FAILED comes with its ``failure``."""

    trial: str
    attempt: Attempt
    seq: Seq
    state: TrialState
    reason: str = ""
    failure: Failure | None = None
    duration: Seconds = 0.0
    reports: list[Report] = field(default_factory=list)  # stored before the outcome
    files: list[InlineFile] = field(default_factory=list)
    # how many reports the attempt sent in all (seqs 1..N): it is finished only once all are stored
    report_count: NonNegative = 0
    devices: DeviceFacts | None = None  # None: its process said nothing of them (it died, say)

    def check(self) -> str:
        if self.state is TrialState.RUNNING:
            return "a DONE cannot leave its trial RUNNING"
        if self.state is TrialState.FAILED and self.failure is None:
            return "a FAILED DONE needs its failure"
        return ""


@dataclass(frozen=True)
class Ack:
    """A stored (or, with ``ok`` False, refused) message, named by its sender's key."""

    trial: str
    attempt: Attempt
    seq: Seq
    ok: bool = True
    reason: str = ""


@dataclass(frozen=True)
class StateChange:
    trial: str
    attempt: Attempt
    state: TrialState
    worker: str = ""
    reason: str = ""
    failure: Failure | None = None
    output_dir: str = ""
    devices: DeviceFacts | None = None  # when it ended: what its GPUs were and did


@dataclass(eq=True)
class Event:
    """Something a client must hear, in order: a relayed report or a state change."""

    seq: Seq
    report: Report | None = None
    state: StateChange | None = None

    def check(self) -> str:
        return (
            "" if (self.report is None) != (self.state is None) else "an event is a report or a state change"
        )

    @property
    def trial(self) -> str:
        return self.report.trial if self.report is not None else self.state.trial if self.state else ""


@dataclass(frozen=True)
class SubmitBatch:
    items: list[Submit]


@dataclass(frozen=True)
class RunBatch:
    items: list[Run]


@dataclass(frozen=True)
class ReportBatch:
    items: list[Report]

    def check(self) -> str:
        return "" if self.items else "an empty REPORTS"


@dataclass(frozen=True)
class DoneBatch:
    items: list[Done]


@dataclass(frozen=True)
class AckBatch:
    items: list[Ack]


@dataclass(frozen=True)
class EventBatch:
    items: list[Event]


BODY_TYPES: dict[MsgType, type] = {
    MsgType.HELLO: Hello,
    MsgType.WELCOME: Welcome,
    MsgType.READY: Ready,
    MsgType.HEARTBEAT: Heartbeat,
    MsgType.CANCEL: Cancel,
    MsgType.STATUS: Empty,
    MsgType.STATUS_REPLY: StatusReply,
    MsgType.SHUTDOWN: Empty,
    MsgType.BYE: Empty,
    MsgType.RESET: Reset,
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
    MsgType.REFUSED: Refused,
    MsgType.CHECKPOINT: FileChunk,
}


def pack_metric(value: Metric) -> bytes:
    """A validated metric as the bytes a Report carries."""
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def unpack_metric(data: bytes) -> Metric:
    """A Report's bytes as a metric (a number, or a dict of numbers); ProtocolError when they are not one."""
    try:
        return validate_metric(msgpack.unpackb(data, raw=False))
    except Exception as exc:  # whatever the bytes hold, it is not a metric
        raise ProtocolError(f"a report that is not a metric: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Outgoing:
    """A message kept until acknowledged; signed afresh on every send, so a re-send is no replay."""

    type: MsgType
    body: Any
    trial: str = ""
    attempt: int = 0
    seq: int = 0

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.trial, self.attempt, self.seq)

    def frames(self, session: Session) -> list[bytes]:
        """This message alone (a kept SUBMITS or DONES item travels as a batch of one)."""
        make = _ITEM_BATCHES.get(self.type)
        body = make([self.body]) if make is not None else self.body
        return session.frames(self.type, body, trial=self.trial, attempt=self.attempt, seq=self.seq)


@dataclass(frozen=True)
class Message:
    header: Header
    body: Any

    @property
    def type(self) -> MsgType:
        return self.header.type


_ITEM_BATCHES: dict[MsgType, Callable[[list[Any]], Any]] = {
    MsgType.SUBMITS: SubmitBatch,
    MsgType.DONES: DoneBatch,
}


def item_bytes(item: Any) -> int:
    """About how many bytes a batch item takes on the wire (to close batches well under the limit)."""
    if isinstance(item, Report):
        return 64 + len(item.value)
    if isinstance(item, Submit):
        return 256 + len(item.evaluator) + len(item.model)
    if isinstance(item, Run):
        return 256 + len(item.evaluator) + len(item.model) + sum(256 + len(m.model) for m in item.mates)
    if isinstance(item, Done):
        files = sum(len(f.data) for f in item.files) + sum(len(r.value) for r in item.reports)
        return 256 + files + _failure_bytes(item.failure)
    if isinstance(item, Event):
        if item.report is not None:
            return 64 + len(item.report.value)
        return 256 + _failure_bytes(item.state.failure if item.state is not None else None)
    return 256


def _failure_bytes(failure: Failure | None) -> int:
    if failure is None:
        return 0
    return len(failure.reason) + len(failure.message) + len(failure.traceback) + len(failure.log_tail)


def kept_frames(
    session: Session, messages: list[Outgoing], *, max_items: int = 256, max_bytes: int = 1 << 20
) -> Iterator[tuple[list[Outgoing], list[bytes]]]:
    """The frames of messages kept for acknowledgement, in order, each with the messages it carries.
    A kept SUBMITS or DONES holds one item; consecutive ones travel together, at most ``max_items``
    or about ``max_bytes`` a message."""
    run: list[Outgoing] = []
    for i, message in enumerate(messages):
        if message.type in _ITEM_BATCHES:
            run.append(message)
            following = messages[i + 1] if i + 1 < len(messages) else None
            if following is not None and following.type is message.type:
                continue
            make = _ITEM_BATCHES[message.type]
            for part in batches(run, lambda m: item_bytes(m.body), max_items, max_bytes):
                yield part, session.frames(message.type, make([m.body for m in part]))
            run = []
        else:
            yield [message], message.frames(session)


def batches(items: list[T], size: Callable[[T], int], max_items: int, max_bytes: int) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` for batch messages: at most ``max_items``, or ``max_bytes`` reached."""
    start, total = 0, 0
    for i, item in enumerate(items):
        total += size(item)
        if i + 1 == len(items) or i + 1 - start == max_items or total >= max_bytes:
            yield items[start : i + 1]
            start, total = i + 1, 0
