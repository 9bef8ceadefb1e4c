"""The double-entry ledger (contract-billing.md § Ledger): money in integer minor units.

A transaction is a list of :class:`Entry` (account, debit or credit) that must balance
per currency before anything is written (:class:`Unbalanced` otherwise); it is written in
the caller's database transaction, under an id that makes booking it twice impossible
(`transaction_id` is unique per booking: the invoice, refund or recognition it records).
:func:`check` evaluates the invariants over one tenant or all.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

__all__ = ["ACCOUNTS", "Entry", "Unbalanced", "balances", "book", "check", "credit", "debit"]

ACCOUNTS: Final = (
    "cash",
    "receivable",
    "deferred_revenue",
    "revenue",
    "refunds",
    "customer_credit",
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One side of a transaction: ``amount`` (> 0) debited or credited to ``account``."""

    account: str
    amount: int
    debit: bool

    def __post_init__(self) -> None:
        if self.account not in ACCOUNTS:
            raise ValueError(f"no ledger account {self.account!r}")
        if not isinstance(self.amount, int) or isinstance(self.amount, bool) or self.amount <= 0:
            raise ValueError(f"a ledger amount is a whole number > 0, got {self.amount!r}")


class Unbalanced(ValueError):
    """A transaction whose debits and credits differ."""


def debit(account: str, amount: int) -> Entry:
    return Entry(account, amount, debit=True)


def credit(account: str, amount: int) -> Entry:
    return Entry(account, amount, debit=False)


async def book(
    conn: asyncpg.Connection,
    transaction_id: str,
    tenant: uuid.UUID,
    currency: str,
    entries: Sequence[Entry],
    memo: str,
) -> bool:
    """Write a balanced transaction once; False when ``transaction_id`` is booked already."""
    debits = sum(e.amount for e in entries if e.debit)
    credits = sum(e.amount for e in entries if not e.debit)
    if not entries or debits != credits:
        raise Unbalanced(f"{transaction_id}: debits {debits} != credits {credits}")
    # One booking per id, even under concurrent deliveries of one event.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", transaction_id)
    exists = await conn.fetchval(
        "SELECT 1 FROM billing_ledger WHERE transaction_id = $1 LIMIT 1", transaction_id
    )
    if exists:
        return False
    await conn.executemany(
        "INSERT INTO billing_ledger (transaction_id, tenant_id, account, debit, credit, "
        "currency, memo) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            (
                transaction_id,
                tenant,
                e.account,
                e.amount if e.debit else 0,
                0 if e.debit else e.amount,
                currency,
                memo,
            )
            for e in entries
        ],
    )
    return True


async def balances(conn: asyncpg.Connection, tenant: uuid.UUID) -> dict[str, int]:
    """Each account's balance for ``tenant`` (debits minus credits), in minor units."""
    rows = await conn.fetch(
        "SELECT account, sum(debit - credit) AS balance FROM billing_ledger "
        "WHERE tenant_id = $1 GROUP BY account",
        tenant,
    )
    found = dict.fromkeys(ACCOUNTS, 0)
    found.update({row["account"]: int(row["balance"]) for row in rows})
    return found


async def check(conn: asyncpg.Connection, tenant: uuid.UUID | None = None) -> dict[str, Any]:
    """The invariants, each ``{"ok": bool, "detail": ...}``: every transaction balances;
    recognised revenue never exceeds what was billed; deferred revenue is never negative
    (a credit balance); the sum over all accounts is zero; refunds never exceed what
    the tenant's invoices paid."""
    scope, args = ("WHERE tenant_id = $1", [tenant]) if tenant is not None else ("", [])
    unbalanced = await conn.fetch(
        "SELECT transaction_id, currency, sum(debit) AS d, sum(credit) AS c "  # noqa: S608
        f"FROM billing_ledger {scope} GROUP BY transaction_id, currency "
        "HAVING sum(debit) <> sum(credit)",
        *args,
    )
    per_tenant = await conn.fetch(
        "SELECT tenant_id, currency, "  # noqa: S608 - constant scope
        "sum(CASE WHEN account = 'revenue' THEN credit - debit ELSE 0 END) AS recognised, "
        "sum(CASE WHEN account = 'deferred_revenue' AND credit > 0 AND memo LIKE 'invoice%' "
        "THEN credit ELSE 0 END) AS billed, "
        "sum(CASE WHEN account = 'deferred_revenue' THEN credit - debit ELSE 0 END) AS deferred, "
        "sum(debit - credit) AS total, "
        "sum(CASE WHEN account = 'refunds' THEN debit - credit ELSE 0 END) AS refunded, "
        "sum(CASE WHEN account = 'cash' AND debit > 0 AND memo LIKE 'invoice%' "
        "THEN debit ELSE 0 END) AS paid "
        f"FROM billing_ledger {scope} GROUP BY tenant_id, currency",
        *args,
    )
    over = [r for r in per_tenant if r["recognised"] > r["billed"]]
    negative = [r for r in per_tenant if r["deferred"] < 0]
    nonzero = [r for r in per_tenant if r["total"] != 0]
    over_refunded = [r for r in per_tenant if r["refunded"] > r["paid"]]
    return {
        "transactions_balance": {
            "ok": not unbalanced,
            "detail": [r["transaction_id"] for r in unbalanced],
        },
        "recognised_within_billed": {
            "ok": not over,
            "detail": [str(r["tenant_id"]) for r in over],
        },
        "deferred_not_negative": {
            "ok": not negative,
            "detail": [str(r["tenant_id"]) for r in negative],
        },
        "accounts_sum_to_zero": {
            "ok": not nonzero,
            "detail": [str(r["tenant_id"]) for r in nonzero],
        },
        "refunded_within_paid": {
            "ok": not over_refunded,
            "detail": [str(r["tenant_id"]) for r in over_refunded],
        },
    }
