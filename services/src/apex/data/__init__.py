"""The data layer: PostgreSQL pools and migrations, ClickHouse client, tenant isolation."""
