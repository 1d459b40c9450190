"""The order center's own data: customers, CRM leads, orders, refunds, tickets, sent email.

This is the backend's database, not aiassist's: SQLite by default, PostgreSQL by URL
(`BACKEND_DATABASE_URL`). Tables are created at start-up; a real backend would migrate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Integer,
    String,
    TypeDecorator,
    create_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = [
    "BackendSettings",
    "Base",
    "Customer",
    "IdempotentResponse",
    "Lead",
    "Order",
    "Refund",
    "SentEmail",
    "Ticket",
    "connect",
]


class BackendSettings(BaseSettings):
    """Where the backend keeps its data and sends its mail (`BACKEND_*` variables)."""

    model_config = SettingsConfigDict(env_prefix="BACKEND_")

    database_url: str = "sqlite:///backend.db"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    mail_from: str = "sales@order-center.example"


def utcnow() -> datetime:
    return datetime.now(UTC)


class When(TypeDecorator[datetime]):
    """A UTC time that comes back with its zone on SQLite too (which stores none), so the
    API's date-times always carry an offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class Lead(Base):
    __tablename__ = "leads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    interest: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(20), default="new")
    owner: Mapped[str | None] = mapped_column(String(100))
    follow_up_at: Mapped[datetime | None] = mapped_column(When)
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[float]
    status: Mapped[str] = mapped_column(String(20))
    decision: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class Refund(Base):
    __tablename__ = "refunds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    amount: Mapped[float]
    reason: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(20), default="requested")
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_email: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(10_000))
    category: Mapped[str] = mapped_column(String(20), default="general")
    status: Mapped[str] = mapped_column(String(20), default="open")
    assignee: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)
    triage: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class SentEmail(Base):
    __tablename__ = "sent_emails"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    to: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(10_000))
    message_id: Mapped[str] = mapped_column(String(200))
    sent_at: Mapped[datetime] = mapped_column(When, default=utcnow)


class IdempotentResponse(Base):
    """The first answer to a request carrying an `Idempotency-Key`, replayed to repeats."""

    __tablename__ = "idempotent_responses"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    status_code: Mapped[int | None]
    body: Mapped[bytes | None]
    created_at: Mapped[datetime] = mapped_column(When, default=utcnow)


def connect(url: str) -> tuple[Engine, sessionmaker[Any]]:
    """An engine with the tables in place, and its session factory."""
    args = {"check_same_thread": False} if url.startswith("sqlite") else {}
    engine = create_engine(url, connect_args=args, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
