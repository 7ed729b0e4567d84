"""The tables. Times are stored as UTC; see ``UTCDateTime``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite as on PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ComputerRecord(Base):
    __tablename__ = "computers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime)
    max_lifetime_seconds: Mapped[int] = mapped_column(Integer)
    inactivity_timeout_seconds: Mapped[int] = mapped_column(Integer)
    idle_timeout_enabled: Mapped[bool] = mapped_column(Boolean)
    display_width: Mapped[int] = mapped_column(Integer)
    display_height: Mapped[int] = mapped_column(Integer)
    display_scale: Mapped[float] = mapped_column(Float, default=1.0)
    persistent: Mapped[bool] = mapped_column(Boolean, default=False)
    environment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    context_id: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    termination_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)  # fleet mode: its node


class EnvironmentRecord(Base):
    """The saved state of a persistent computer (core/environments.py); its id is that computer's id."""

    __tablename__ = "environments"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    path: Mapped[str] = mapped_column(String(1024))
    context_id: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    saved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the computer that saved it last
    last_error: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class TaskRecord(Base):
    """An agent task (agent/): what was asked, how far it got, how it ended."""

    __tablename__ = "agent_tasks"
    __table_args__ = (UniqueConstraint("org_id", "idempotency_key", name="uq_agent_tasks_idempotency"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    instruction: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    computer_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the start request, as validated
    task_metadata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the caller's `metadata`
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)  # why it ended: done, max_steps, stuck…
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # tokens in/out summed over the task


class ResponseRecord(Base):
    """A ``/v1/responses`` response (gateway/): for one an upstream holds (``mode`` native), only whose
    it is and where it lives; for one emulated over a chat upstream, all of it: its input, output,
    status and the event log its stream is replayed from."""

    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    model: Mapped[str] = mapped_column(String(256))  # the id the caller named (the registry's)
    mode: Mapped[str] = mapped_column(String(16))  # native | emulated
    status: Mapped[str] = mapped_column(String(32))
    background: Mapped[bool] = mapped_column(Boolean, default=False)
    previous_response_id: Mapped[str | None] = mapped_column(String(96), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the create body but its input
    input_items: Mapped[list[Any]] = mapped_column(JSON, default=list)  # this request's own input, as items
    response: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the Response object, as last known
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the stream's events, for ?starting_after=


class RecordingRecord(Base):
    """A recording of a computer's screen (core/recording.py): its MP4 and timeline live in
    ``<data_dir>/recordings/`` under its id; the row survives its computer when ``keep``."""

    __tablename__ = "recordings"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    computer_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # the computer's
    status: Mapped[str] = mapped_column(String(32), index=True)  # recording | ready | broken
    keep: Mapped[bool] = mapped_column(Boolean, default=False)  # outlives its computer
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    duration_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # video and timeline
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    stop_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class NodeRecord(Base):
    """A machine of a fleet (OPENCONE_FLEET=ray, fleet/registry.py): where its node agent answers, what it
    can hold and holds, and when it last said so. Unused in local mode."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # "node-" + the Ray node id, or any unique id
    ray_node_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    url: Mapped[str] = mapped_column(String(1024))  # the agent's internal base URL
    incarnation: Mapped[int] = mapped_column(Integer, default=0)  # bumped by each agent start on the node
    state: Mapped[str] = mapped_column(String(16), index=True)  # ready | draining | dead
    capacity_browser: Mapped[int] = mapped_column(Integer, default=0)
    capacity_desktop: Mapped[int] = mapped_column(Integer, default=0)
    live_browser: Mapped[int] = mapped_column(Integer, default=0)
    live_desktop: Mapped[int] = mapped_column(Integer, default=0)
    reserved_browser: Mapped[int] = mapped_column(Integer, default=0)  # slots taken by creates in flight
    reserved_desktop: Mapped[int] = mapped_column(Integer, default=0)
    # the last reservation taken: a heartbeat long after it clears reservations a dead replica left
    reserved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    free_mem_mb: Mapped[int] = mapped_column(Integer, default=0)
    load: Mapped[float] = mapped_column(Float, default=0.0)  # 1-minute load average per core
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FleetObject(Base):
    """Which node holds an object a node made (fleet mode only, fleet/owned.py): an agent task, a stored
    response, a saved environment, a recording, an OpenEnv session. Found by asking the nodes once, then
    read from here by every replica."""

    __tablename__ = "fleet_objects"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    node_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
