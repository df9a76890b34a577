"""Demo data: dataset specs, a master table and messy sample files under HISTIMPORT_HOME.

What it writes shows each capability once: a sign-up export with bad rows and misspelled
ambassador names (fuzzy matching), an Excel file, a JSON export, the same file dropped twice
(duplicate), a near-duplicate (upsert: one row changed), and a week of daily session files
with one day missing (the schedule's gap backfill).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml

from histimport_pipeline.engine.db import Database
from histimport_pipeline.engine.settings import Settings

AMBASSADORS = [
    (1, "ana.lima@example.org", "Ana Lima"),
    (2, "bruno.costa@example.org", "Bruno Costa"),
    (3, "chloe.martin@example.org", "Chloé Martin"),
    (4, "david.okafor@example.org", "David Okafor"),
    (5, "eva.novak@example.org", "Eva Novák"),
    (6, "farid.haddad@example.org", "Farid Haddad"),
    (7, "grace.kim@example.org", "Grace Kim"),
    (8, "hugo.schmidt@example.org", "Hugo Schmidt"),
]

SIGNUPS_SPEC = {
    "name": "signups",
    "description": "Sign-ups from the partner exports, one row per sign-up.",
    "target_table": "signups",
    "files": "signups_*",
    "partitioning": "file",
    "strategy": "upsert",
    "key": ["signup_id"],
    "max_error_ratio": 0.2,
    "columns": {
        "signup_id": {"type": "string", "required": True, "aliases": ["ID", "Signup ID"]},
        "email": {"type": "email", "required": True, "aliases": ["E-mail"]},
        "signed_up": {"type": "date", "formats": ["%Y-%m-%d", "%d/%m/%Y"]},
        "plan": {"type": "enum", "allowed": ["free", "pro", "team"]},
        "amount": {"type": "decimal", "min": 0, "scale": 2},
        "ambassador_email": {"type": "string"},
        "ambassador_name": {"type": "string"},
    },
    "references": {
        "ambassador_id": {
            "entity": "ambassadors",
            "match": [
                {"source": "ambassador_email", "field": "email", "method": "exact"},
                {
                    "source": "ambassador_name",
                    "field": "full_name",
                    "method": "fuzzy",
                    "threshold": 90,
                },
            ],
            "on_unmatched": "review",
        }
    },
}


def sessions_spec(start: dt.date) -> dict[str, object]:
    """The daily sessions dataset, starting at ``start``."""
    return {
        "name": "sessions",
        "description": "Daily session counts per site, one file per business day.",
        "target_table": "sessions",
        "files": "sessions_*.csv",
        "partitioning": "daily",
        "start_date": start.isoformat(),
        "strategy": "replace_date",
        "max_error_ratio": 0.1,
        "columns": {
            "site": {"type": "string", "required": True},
            "sessions": {"type": "integer", "min": 0, "required": True},
            "bounce_rate": {"type": "decimal", "min": 0, "max": 1, "scale": 4},
        },
    }


@dataclass
class DemoResult:
    """What the demo wrote."""

    specs: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    master_rows: int = 0


def _signup_rows(start: int, count: int) -> list[list[str]]:
    rows = []
    for i in range(start, start + count):
        amb = AMBASSADORS[i % len(AMBASSADORS)]
        rows.append(
            [
                f"S{i:05d}",
                f"user{i}@example.com",
                f"2024-01-{1 + i % 28:02d}",
                ["free", "pro", "team"][i % 3],
                f"{(i % 7) * 9.5:.2f}",
                amb[1],
                amb[2],
            ]
        )
    return rows


#: The sign-up files' header: the spec's aliases and column names, as a partner writes them.
SIGNUP_HEADER = [
    "ID",
    "E-mail",
    "signed_up",
    "plan",
    "amount",
    "ambassador_email",
    "ambassador_name",
]


def write_demo(settings: Settings, db: Database, today: dt.date | None = None) -> DemoResult:
    """Write the demo specs, master table and inbox files (idempotent for the specs/master).

    Args:
        settings: where to write (datasets folder, inbox).
        db: the target database; the ``ambassadors`` master table is created there.
        today: the day the daily files lead up to (default: today).

    Returns:
        The paths written and the master rows inserted.
    """
    today = today or dt.date.today()
    result = DemoResult()
    _write_specs(settings.datasets, today, result)
    result.master_rows = _write_master(db)
    inbox = settings.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    _write_signup_files(inbox, result)
    _write_session_files(inbox, today, result)
    return result


def _write_specs(folder: Path, today: dt.date, result: DemoResult) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in (
        ("signups", SIGNUPS_SPEC),
        ("sessions", sessions_spec(today - dt.timedelta(days=14))),
    ):
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        result.specs.append(path)


def _write_master(db: Database) -> int:
    """Create the ``ambassadors`` master table and add the rows it lacks; returns how many."""
    md = sa.MetaData()
    ambassadors = sa.Table(
        "ambassadors",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("full_name", sa.Text, nullable=False),
    )
    with db.engine.begin() as conn:
        md.create_all(conn)
        present = set(conn.execute(sa.select(ambassadors.c.id)).scalars())
        new = [{"id": i, "email": e, "full_name": n} for i, e, n in AMBASSADORS if i not in present]
        if new:
            conn.execute(sa.insert(ambassadors), new)
        return len(new)


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SIGNUP_HEADER)
    writer.writerows(rows)
    return buf.getvalue()


def _write_signup_files(inbox: Path, result: DemoResult) -> None:
    """The sign-up exports: a messy CSV, its duplicate, a corrected copy, JSON and Excel."""
    header = SIGNUP_HEADER
    january = _signup_rows(1, 40)
    # messy rows: a bad email, an impossible date, a negative amount, an unknown plan,
    # a misspelled ambassador (fuzzy match), an ambassador nobody knows (review)
    january[3][1] = "not-an-email"
    january[5][2] = "2024-02-30"
    january[7][4] = "-3.00"
    january[9][3] = "enterprise"
    january[11][5], january[11][6] = "", "Bruno Cozta"
    january[12][5], january[12][6] = "", "Chloe Martin"
    january[13][5], january[13][6] = "", "Zed Unknown"
    january[15][0] = "007"  # leading zeros survive
    files = {
        "signups_2024-01.csv": _csv_text(january),
        # the same content again under another name: recorded as a duplicate
        "signups_2024-01_resent.csv": _csv_text(january),
    }
    near = [row[:] for row in january[:30]]
    near[0][4] = "99.00"  # one row changed: the upsert updates it, the rest are unchanged
    files["signups_2024-01_corrected.csv"] = _csv_text(near)
    for name, text in files.items():
        path = inbox / name
        path.write_text(text, encoding="utf-8")
        result.files.append(path)

    feb = _signup_rows(100, 12)
    json_path = inbox / "signups_2024-02.json"
    json_path.write_text(
        json.dumps(
            [dict(zip(header, row, strict=True)) for row in feb], indent=1, ensure_ascii=False
        )
    )
    result.files.append(json_path)

    xlsx_path = inbox / "signups_2024-03.xlsx"
    _write_xlsx(xlsx_path, header, _signup_rows(200, 10))
    result.files.append(xlsx_path)


def _write_session_files(inbox: Path, today: dt.date, result: DemoResult) -> None:
    """A week of daily session files up to ``today``, one day missing and one rejected."""
    missing = today - dt.timedelta(days=4)
    for back in range(7, 0, -1):
        day = today - dt.timedelta(days=back)
        if day == missing:
            continue  # the gap the daily schedule's backfill finds
        lines = ["site,sessions,bounce_rate"]
        lines += [f"site-{s},{(back * 37 + s * 11) % 500},0.{(back + s) % 9}5" for s in range(6)]
        if back == 2:
            # "NA" is not a number: 1 failed row of 7 (14%) is over the 10% gate, so this
            # day is rejected and nothing of it loads (the CONFIRM gate, visible in the UI)
            lines.append("site-x,NA,0.5")
        path = inbox / f"sessions_{day.isoformat()}.csv"
        path.write_text("\n".join(lines) + "\n")
        result.files.append(path)


def _write_xlsx(path: Path, header: list[str], rows: list[list[str]]) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Signups"
    ws.append(header)
    for row in rows:
        ws.append([*row[:4], float(row[4]), *row[5:]])
    wb.save(path)
