"""The sql analyser on a real PostgreSQL with HypoPG: patterns named with their plans,
indexes advised only when the planner, given them hypothetically, cuts the cost; a read-only
user is enough; real server logs (log_min_duration_statement, auto_explain) are read; bad
DSNs and unreadable logs are clear errors, on the CLI and over HTTP."""

from __future__ import annotations

import glob
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from aiassist.modules.sql import IndexFeatures, module
from aiassist.modules.sql.analysis import analyze, connect
from aiassist.modules.sql.findings import Analysis
from aiassist.modules.sql.settings import SqlSettings
from aiassist.modules.sql.sources import SourceError, Statement, from_log, from_queries

from .conftest import scoped_service

pytestmark = [pytest.mark.postgres, pytest.mark.services]

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SCHEMA = """
create table users (id bigserial primary key, email text not null, name text);
create table orders (id bigserial primary key, user_id bigint not null references users,
  status text not null, note text, created_at timestamptz not null, product_id int not null);
insert into users (email, name) select 'user' || i || '@example.org', 'user ' || i
  from generate_series(1, 20000) i;
insert into orders (user_id, status, note, created_at, product_id)
  select 1 + (i * 7) % 20000, (array['delivered','delivered','delivered','shipped','new'])
  [1 + i % 5], 'note ' || i, timestamptz '2026-01-01' + i * interval '1 minute', i % 3000
  from generate_series(1, 60000) i;
create index users_email on users (email);
create index orders_status on orders (status);
create index orders_status_again on orders (status);
create index orders_status_product on orders (status, product_id);
analyze;
"""
QUERIES = """
select * from users where lower(email) = 'user5@example.org';
select * from orders o join users u on u.id = o.user_id where u.email = 'user9@example.org';
select * from orders order by created_at desc limit 20;
select count(*) from orders where status = 'delivered';
select * from orders where note like '%42%';
select * from orders where user_id = 5 or product_id = 7;
select * from orders where id = 42.0;
select * from orders where product_id = 17;
"""
SETTINGS = SqlSettings()


def _database(name: str, *statements: str) -> str:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    return url


def _as_admin(url: str) -> str:
    return ADMIN.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]


def _drop(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="module")
def shop() -> Iterator[str]:
    """A small shop with HypoPG, and a role that may only read it."""
    name = f"aiassist_sql_{secrets.token_hex(4)}"
    role = f"reader_{secrets.token_hex(4)}"
    url = _database(
        name, "create extension hypopg", SCHEMA,
        f"create role {role} login", f"grant select on all tables in schema public to {role}",
    )  # fmt: skip
    yield url.replace("postgres@", f"{role}@")  # the admin's is `_as_admin(url)`
    _drop(name)
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"drop role if exists {role}")


@pytest.fixture(scope="module")
def analysis(shop: str) -> Analysis:
    with connect(shop, SETTINGS) as conn:
        return analyze(conn, from_queries(QUERIES), settings=SETTINGS, source="queries")


def test_the_analysis_connection_cannot_write(shop: str) -> None:
    with connect(shop, SETTINGS) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("create temporary table scratch (x int)")


def test_each_pattern_is_named_with_the_plan_as_evidence(analysis: Analysis) -> None:
    found = {(f.pattern, f.table, tuple(f.columns)): f for f in analysis.findings}
    statement_patterns = {
        ("function_on_indexed_column", "users", ("email",)),
        ("unindexed_foreign_key_join", "orders", ("user_id",)),
        ("sort_without_index", "orders", ("created_at",)),
        ("low_selectivity", "orders", ("status",)),
        ("leading_wildcard_like", "orders", ("note",)),
        ("or_across_columns", "orders", ("product_id", "user_id")),
        ("implicit_cast", "orders", ("id",)),
        ("composite_index_order", "orders", ("product_id",)),
    }
    assert statement_patterns <= found.keys(), sorted(found)
    for key in statement_patterns:
        assert any(line.startswith(("Seq Scan", "Index", "Bitmap")) for line in found[key].evidence)
        assert found[key].groups, key
    assert "((id)::numeric = 42.0)" in " ".join(found["implicit_cast", "orders", ("id",)].evidence)
    duplicate = found["duplicate_index", "orders", ("status",)]
    assert "orders_status_again" in duplicate.message and "orders_status " in duplicate.message
    unused = {f.columns[0] for f in analysis.findings if f.pattern == "unused_index"}
    assert "email" in unused  # never scanned since the database was made


def test_advice_is_what_the_planner_proves_and_nothing_else(analysis: Analysis) -> None:
    assert analysis.hypopg
    advised = {(r.table, tuple(r.keys)) for r in analysis.advised()}
    assert ("orders", ("user_id",)) in advised  # the join, and the OR with product_id
    assert ("orders", ("created_at",)) in advised
    assert ("users", ("(lower(email))",)) in advised
    assert not {k for t, k in advised if k[0] in ("status", "note")}  # neither would be used
    for r in analysis.advised():
        assert r.verified and r.factor >= SETTINGS.min_cost_factor
        assert r.cost_after * SETTINGS.min_cost_factor <= r.cost_before
        assert r.statement.startswith(f"CREATE INDEX CONCURRENTLY ON {r.table} (")
        assert r.decision_id and r.explanation.startswith("rule: ")


def test_the_decision_weighs_the_gain_against_the_writes() -> None:
    base = module.example | {"cost_factor": 50.0, "calls": 100, "mean_ms": 20.0, "keys": 1}
    read_mostly = module.fallback(IndexFeatures(**base | {"table_writes": 1000}))
    write_heavy = module.fallback(IndexFeatures(**base | {"table_writes": 10_000_000}))
    not_enough = module.fallback(IndexFeatures(**base | {"cost_factor": 1.5, "table_writes": 0}))
    assert read_mostly.advised and read_mostly.gain_ms == pytest.approx(100 * 20 * (1 - 1 / 50))
    assert not write_heavy.advised and write_heavy.write_cost_ms > write_heavy.gain_ms
    assert not not_enough.advised


def test_statements_with_parameters_get_a_generic_plan(shop: str) -> None:
    """What pg_stat_statements keeps: `$n` in place of the constants."""
    statements = [Statement("select * from orders where user_id = $1 and created_at > $2", 40)]
    with connect(shop, SETTINGS) as conn:
        result = analyze(conn, statements, settings=SETTINGS, source="pg_stat_statements")
    [group] = result.query_groups
    assert group.error is None and group.seq_scans == ["orders"] and group.calls == 40
    assert any(r.keys[0] == "user_id" for r in result.advised())


def test_without_hypopg_indexes_are_ranked_by_rule_and_say_so() -> None:
    name = f"aiassist_sql_{secrets.token_hex(4)}"
    url = _database(name, SCHEMA)
    try:
        with connect(url, SETTINGS) as conn:
            result = analyze(conn, from_queries(QUERIES), settings=SETTINGS, source="queries")
    finally:
        _drop(name)
    assert not result.hypopg and result.recommendations and not result.advised()
    assert all(not r.verified and "HypoPG is not installed" in r.explanation
               for r in result.recommendations)  # fmt: skip


def test_a_real_server_log_is_read(shop: str) -> None:
    """log_min_duration_statement (simple and extended protocol) and auto_explain lines,
    written by this very server, from the log file it writes."""
    [logfile] = glob.glob("/var/log/postgresql/postgresql-*-main.log")
    offset = Path(logfile).stat().st_size
    marker = secrets.token_hex(4)
    with psycopg.connect(_as_admin(shop), autocommit=True) as c:  # logging is a superuser's
        c.execute("set log_min_duration_statement = 0")
        c.execute(f"select * from orders\n\twhere note = 'x{marker}'")
        c.execute("select * from orders where user_id = %s and note <> %s", (3, marker))
        c.execute("load 'auto_explain'")
        c.execute("set auto_explain.log_min_duration = 0")
        c.execute("set log_min_duration_statement = -1")
        c.execute(f"select count(*) from users where name = 'y{marker}'")
    with open(logfile, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        statements = [s for s in from_log(f) if marker in s.text or "$1" in s.text]
    texts = [s.text for s in statements]
    assert f"select * from orders where note = 'x{marker}'" in texts  # two lines, joined
    assert "select * from orders where user_id = $1 and note <> $2" in texts
    assert f"select count(*) from users where name = 'y{marker}'" in texts  # auto_explain
    assert all(s.total_ms > 0 for s in statements)


def test_a_log_that_is_not_a_server_log_yields_nothing() -> None:
    assert from_log(["GET / HTTP/1.1 200", "\tcontinued", ""]) == []


def test_queries_that_do_not_parse_are_a_clear_error() -> None:
    with pytest.raises(SourceError, match="do not parse"):
        from_queries("select * from where;")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    aiassist = Path(sys.executable).with_name("aiassist")  # the console script, as a user runs it
    return subprocess.run(
        [str(aiassist), "sql", "analyze", *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")}
        | {"COLUMNS": "240"}
        | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_prints_the_analysis_and_writes_both_reports(shop: str, tmp_path: Path) -> None:
    queries = tmp_path / "queries.sql"
    queries.write_text(QUERIES)
    html, markdown = tmp_path / "report.html", tmp_path / "report.md"
    done = _cli("--queries", str(queries), "--report", str(html), env={"AIASSIST_SQL_DSN": shop})
    assert done.returncode == 0, done.stderr
    assert "CREATE INDEX CONCURRENTLY ON orders (user_id)" in done.stdout.replace("\n", " ")
    page = html.read_text()
    assert "<svg" in page and "foreign key joined without an index" in page
    done = _cli("--dsn", shop, "--queries", str(queries), "--report", str(markdown))
    assert done.returncode == 0, done.stderr
    assert "![time share per query group](report.svg)" in markdown.read_text()
    assert (tmp_path / "report.svg").read_text().startswith("<?xml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dsn", "postgresql://nobody@127.0.0.1:1/none"], "cannot connect to the database"),
        (["--dsn", "not a dsn at all"], "cannot connect to the database"),
        (["--dsn", "postgresql://postgres@127.0.0.1/postgres", "--log", "/no/such.log"],
         "cannot read /no/such.log"),
        ([], "no database: pass --dsn or set AIASSIST_SQL_DSN"),
    ],
)  # fmt: skip
def test_bad_input_on_the_cli_is_a_clear_error(args: list[str], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split()) and "Traceback" not in done.stderr


def test_pg_stat_statements_missing_is_named(shop: str) -> None:
    done = _cli("--dsn", shop)
    assert done.returncode == 2
    assert "pg_stat_statements is not installed" in " ".join(done.stderr.split())


def test_the_service_analyses_the_configured_database(shop: str, tmp_path: Path) -> None:
    with scoped_service(tmp_path, AIASSIST_SQL_DSN=shop) as service:
        url = f"{service.process.url}/v1/sql/analyze"
        body = {"source": "queries", "text": QUERIES}
        response = httpx.post(url, json=body, headers=service.headers("admin"), timeout=60)
        assert response.status_code == 200, response.text
        result = Analysis.model_validate(response.json())
        assert {"orders", "users"} <= {r.table for r in result.advised()}
        assert httpx.post(url, json=body, headers=service.headers("decide")).status_code == 403
        bad = httpx.post(url, json={"source": "queries", "text": "select from from"},
                         headers=service.headers("admin"))  # fmt: skip
        assert bad.status_code == 422 and "do not parse" in bad.json()["detail"]
        missing = httpx.post(url, json={}, headers=service.headers("admin"), timeout=30)
        assert missing.status_code == 409 and "pg_stat_statements" in missing.json()["detail"]


def test_a_trained_model_judges_the_advice(shop: str, tmp_path: Path) -> None:
    """The bootstrap model (its stated assumption: fixed costs cap the gain of fast
    queries) is trained, promoted, and then answers in place of the rule."""
    env = {"AIASSIST_DATA_DIR": str(tmp_path / "data"), "AIASSIST_SQL_DSN": shop}
    aiassist = Path(sys.executable).with_name("aiassist")
    trained = subprocess.run(
        [str(aiassist), "train", "sql", "--synthetic", "--rows", "3000"],
        env={k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")} | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert trained.returncode == 0 and "promoted sql v0001" in trained.stdout, trained.stderr
    queries, report = tmp_path / "queries.sql", tmp_path / "report.html"
    queries.write_text(QUERIES)
    done = _cli("--queries", str(queries), "--report", str(report), env=env)
    assert done.returncode == 0, done.stderr
    page = report.read_text()
    assert "model: " in page and "rule: " not in page


# --- the watch: pg_stat_statements, regressions, signed alerts ------------------------------
def test_the_watch_alerts_once_on_a_regression_and_remembers(tmp_path: Path) -> None:
    from aiassist.drift.alerts import WebhookAlerter
    from aiassist.modules.sql.watch import Watch

    from .conftest import Webhook, wait_for
    from .test_drift import SECRET

    name = f"aiassist_sql_{secrets.token_hex(4)}"
    url = _database(
        name, "create extension pg_stat_statements",
        "create table orders (id bigserial primary key, user_id int not null, note text)",
        "insert into orders (user_id, note) select i % 5000, md5(i::text) "
        "from generate_series(1, 200000) i",
        "create index orders_user on orders (user_id)", "analyze",
    )  # fmt: skip
    hook = Webhook(SECRET, fail_first=0)
    alerter = WebhookAlerter(hook.url, secret=SECRET, backoff_s=0.05)
    state = tmp_path / "watch.json"
    try:
        with psycopg.connect(url, autocommit=True) as app, connect(url, SETTINGS) as conn:

            def traffic() -> None:
                for user in range(30):
                    app.execute("select * from orders where user_id = %s", (user,)).fetchall()

            watch = Watch(conn, state, alerter, min_calls=20)
            traffic()
            assert watch.check() == []  # the first pass learns the baselines
            traffic()
            assert watch.check() == []  # as fast as before
            app.execute("drop index orders_user")
            traffic()
            [alert] = watch.check()
            assert alert.event == "sql.regression" and alert.seq_scans == ["orders"]
            assert alert.baseline_ms is not None and alert.mean_ms >= 2 * alert.baseline_ms
            assert "where user_id = $1" in alert.query
            wait_for(lambda: len(hook.alerts) == 1, 20, "the signed alert")
            assert hook.valid_signatures and hook.alerts[0]["event"] == "sql.regression"
            restarted = Watch(conn, state, alerter, min_calls=20)
            assert restarted.state.baseline_ms == watch.state.baseline_ms
            assert restarted.check() == []  # nothing new since: no second alert
    finally:
        alerter.close()
        hook.close()
        _drop(name)


def test_the_watch_needs_pg_stat_statements(shop: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("aiassist")), "sql", "watch", "--once",
         "--dsn", shop, "--state", str(tmp_path / "w.json")],
        env={k: v for k, v in os.environ.items() if not k.startswith("AIASSIST_")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "pg_stat_statements is not installed" in done.stderr


def test_an_advised_index_once_created_is_timed_as_the_decisions_outcome(tmp_path: Path) -> None:
    from aiassist.modules.sql.watch import Watch

    name = f"aiassist_sql_{secrets.token_hex(4)}"
    url = _database(
        name, "create extension pg_stat_statements", "create extension hypopg",
        "create table orders (id bigserial primary key, user_id int not null, note text)",
        "insert into orders (user_id, note) select i % 5000, md5(i::text) "
        "from generate_series(1, 200000) i",
        "analyze",
    )  # fmt: skip
    outcomes: list[tuple[str, dict[str, float]]] = []
    try:
        with psycopg.connect(url, autocommit=True) as app, connect(url, SETTINGS) as conn:

            def traffic() -> None:
                for user in range(30):
                    app.execute("select * from orders where user_id = %s", (user,)).fetchall()

            watch = Watch(
                conn, tmp_path / "watch.json", record=lambda d, o: outcomes.append((d, o))
            )
            traffic()
            watch.check()  # the baseline: a sequential scan a call
            statements = [Statement("select * from orders where user_id = $1", 30)]
            advice = analyze(conn, statements, settings=SETTINGS, source="pg_stat_statements")
            [advised] = advice.advised()
            assert watch.state.track(advice.recommendations) == 1
            app.execute(advised.statement)  # the DBA runs CREATE INDEX CONCURRENTLY
            traffic()
            watch.check()  # the index is there: the latency before is the baseline
            assert outcomes == []
            traffic()
            watch.check()  # a whole interval with it: the latency after
    finally:
        _drop(name)
    [(decision_id, outcome)] = outcomes
    assert decision_id == advised.decision_id and not watch.state.tracked
    assert outcome["latency_after_ms"] * 5 < outcome["latency_before_ms"]


def test_explain_analyze_when_allowed_runs_only_in_read_only_transactions(shop: str) -> None:
    allowed = SqlSettings(allow_analyze=True)
    statements = [Statement("select * from orders where user_id = 5"),
                  Statement("delete from orders where user_id = 6")]  # fmt: skip
    with connect(shop, allowed) as conn:
        result = analyze(conn, statements, settings=allowed, source="queries")
    select, delete = sorted(result.query_groups, key=lambda g: g.query)[::-1]
    assert result.analyze and select.error is None and select.cost
    assert delete.error is not None and "read-only transaction" in delete.error
    with psycopg.connect(_as_admin(shop)) as admin:
        assert admin.execute("select count(*) from orders where user_id = 6").fetchone() == (3,)
