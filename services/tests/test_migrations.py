"""Migration files: naming, sections, checksums, and the files shipped with apex.data."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex.data.migrations import MigrationError, load_migrations, parse_migration

GOOD = """-- What this migration is for.

-- migrate:up
CREATE TABLE t (id int);

-- migrate:down
DROP TABLE t;
"""


def test_parse_sections_name_and_version() -> None:
    migration = parse_migration("0007_create_t.sql", GOOD)
    assert (migration.version, migration.name) == (7, "create_t")
    assert migration.up == "CREATE TABLE t (id int);"
    assert migration.down == "DROP TABLE t;"
    assert migration.reversible
    assert len(migration.checksum) == 64


def test_checksum_follows_content_but_not_line_endings() -> None:
    base = parse_migration("0001_a.sql", GOOD)
    assert parse_migration("0001_a.sql", GOOD.replace("\n", "\r\n")).checksum == base.checksum
    assert (
        parse_migration("0001_a.sql", GOOD.replace("id int", "id bigint")).checksum != base.checksum
    )


def test_empty_down_section_makes_it_irreversible() -> None:
    text = "-- migrate:up\nCREATE TABLE t (id int);\n-- migrate:down\n-- nothing to undo\n"
    assert not parse_migration("0001_a.sql", text).reversible


@pytest.mark.parametrize(
    "filename", ["1_a.sql", "0001-a.sql", "0001_A.sql", "0001_a.txt", "abcd_a.sql", "0001_.sql"]
)
def test_bad_file_names(filename: str) -> None:
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        parse_migration(filename, GOOD)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CREATE TABLE t (id int);", "found none"),
        ("-- migrate:up\nCREATE TABLE t (id int);\n", "found ['up']"),
        (
            "-- migrate:down\nDROP TABLE t;\n-- migrate:up\nCREATE TABLE t (id int);\n",
            "found ['down', 'up']",
        ),
        (
            "-- migrate:up\nA;\n-- migrate:up\nB;\n-- migrate:down\nC;\n",
            "found ['up', 'up', 'down']",
        ),
        (
            "-- migrate:up\n-- only a comment\n-- migrate:down\nDROP TABLE t;\n",
            "the up section is empty",
        ),
        ("SELECT 1;\n-- migrate:up\nA;\n-- migrate:down\nB;\n", "only comments may come before"),
    ],
)
def test_malformed_files(text: str, message: str) -> None:
    with pytest.raises(MigrationError) as info:
        parse_migration("0001_a.sql", text)
    assert message in str(info.value)
    assert "0001_a.sql" in str(info.value)


def test_versions_must_be_contiguous(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text(GOOD)
    (tmp_path / "0003_c.sql").write_text(GOOD)
    with pytest.raises(MigrationError, match=r"expected 0002, found 0003_c\.sql"):
        load_migrations(tmp_path)


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text(GOOD)
    (tmp_path / "0001_b.sql").write_text(GOOD)
    with pytest.raises(MigrationError, match="expected 0002"):
        load_migrations(tmp_path)


def test_shipped_migrations_parse_and_are_reversible() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.reversible for m in migrations)
    names = " ".join(m.up for m in migrations)
    for table in ("users", "api_keys", "audit_events", "tenant_settings"):
        assert f"CREATE TABLE {table}" in names


def test_tenant_settings_rls_is_forced() -> None:
    (tenant,) = [m for m in load_migrations() if "tenant_settings" in m.name]
    assert "ENABLE ROW LEVEL SECURITY" in tenant.up
    assert "FORCE ROW LEVEL SECURITY" in tenant.up
    assert "current_setting('apex.tenant_id', true)" in tenant.up
