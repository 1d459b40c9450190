"""The `aiassist` command: up, serve, daemon, train, models, keys, db, settings, and the
commands each module brings."""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from aiassist.__about__ import __version__
from aiassist.modules import available_modules
from aiassist.modules.base import import_attribute
from aiassist.settings import ModuleSettings, Settings, SettingsError, load_settings, read_settings

if TYPE_CHECKING:  # the CLI imports what a command needs only when it runs
    from types import FrameType

    from aiassist.registry.store import ModelRegistry
    from aiassist.store.audit import AuditLog
    from aiassist.store.keys import KeyStore
    from aiassist.training.daemon import ModelDaemon

app = typer.Typer(
    help="aiassist: learned decisions and safe automation for your backend.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions and tags on the model volume.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(importlib.import_module("aiassist.drift.cli").app, name="drift")
importlib.import_module("aiassist.agent.cli").register(app)
app.add_typer(importlib.import_module("aiassist.agent.mcp_cli").app, name="mcp")
for _found in available_modules().values():  # `aiassist priority ...`: what a module brings
    if _found.cli is not None:
        app.add_typer(import_attribute(_found.cli), name=_found.name)

console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _audit(settings: Settings) -> AuditLog:
    from aiassist.store.audit import AuditLog
    from aiassist.store.db import make_engine, make_sessionmaker

    return AuditLog(make_sessionmaker(make_engine(settings.resolved_database_url)))


def _keys(settings: Settings) -> KeyStore:
    from aiassist.store.db import make_engine, make_sessionmaker
    from aiassist.store.keys import KeyStore

    return KeyStore(make_sessionmaker(make_engine(settings.resolved_database_url)))


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        console.print(__version__)
        raise typer.Exit()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [AIASSIST_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [AIASSIST_PORT].")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes [AIASSIST_WORKERS].")
    ] = None,
) -> None:
    """Run the inference service (uvicorn)."""
    settings = _settings()
    _serve(settings, host or settings.host, port or settings.port, workers or settings.workers)


def _serve(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "aiassist.server.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        access_log=False,
    )


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Bind address [AIASSIST_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [AIASSIST_PORT].")] = None,
    demo: Annotated[
        bool, typer.Option(help="From a checkout: run the example backend, automated.")
    ] = True,
    backend_port: Annotated[
        int, typer.Option(help="The example backend's port.", envvar="AIASSIST_BACKEND_PORT")
    ] = 8080,
    mail_port: Annotated[
        int, typer.Option(help="The mail sink's SMTP port.", envvar="AIASSIST_MAIL_SINK_PORT")
    ] = 8025,
    inbound_mail_port: Annotated[
        int, typer.Option(help="Inbound SMTP for flows.", envvar="AIASSIST_INBOUND_MAIL_PORT")
    ] = 2525,
) -> None:
    """Start everything on this machine: migrate, make an admin key once, serve.

    Run from a checkout, it also starts the example backend (examples/backend) with a mail
    sink, and loads its API as agent tools and its flows with their triggers.
    """
    from aiassist.store.db import upgrade

    settings = _settings()
    host, port = host or settings.host, port or settings.port
    upgrade(settings.resolved_database_url)
    _key_once(settings, settings.data_dir / "admin.key", "admin (aiassist up)", ["admin"])
    base = f"http://{host}:{port}"
    running = None
    if demo and _demo_available():
        from aiassist.demo import DemoPorts, start_demo

        backend_key = settings.data_dir / "backend.key"
        _key_once(settings, backend_key, "example backend (aiassist up)", ["decide", "outcome"])
        hooks = settings.data_dir / "webhook-secrets.yaml"
        if not hooks.exists():
            _write_secret(hooks, f"support: {secrets.token_urlsafe(32)}")
        running = start_demo(
            settings,
            base,
            DemoPorts(backend_port, mail_port, inbound_mail_port),
            backend_key_file=backend_key,
            webhook_secrets_file=hooks,
            echo=console.print,
            preexec_fn=_die_with_parent,
        )
    out = Console(soft_wrap=True)  # URLs stay whole, whatever the terminal width
    out.print(
        f"[bold green]aiassist {__version__}[/bold green] on "
        f"{_redact(settings.resolved_database_url)}"
    )
    out.print(f"  Swagger UI    {base}/docs")
    out.print(f"  health        {base}/healthz")
    out.print(f"  readiness     {base}/readyz")
    out.print(f"  metrics       {base}/metrics")
    if settings.auth:
        key_file = settings.data_dir / "admin.key"
        out.print(f"  admin key     in {key_file} (send it as 'Authorization: Bearer <key>')")
    if running is not None:
        out.print(f"  backend       {running.backend_url}/docs (the example order center)")
        out.print(f"  flows         {base}/v1/flows (examples/backend/flows)")
        out.print(
            f"  inbound mail  smtp://127.0.0.1:{inbound_mail_port}, to sales@order-center.example"
        )
        out.print(f"  sent mail     kept in {settings.data_dir / 'mail'}")
    daemon = _start_daemon()
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        _serve(settings, host, port, settings.workers)
    finally:
        if daemon is not None:
            _stop_child(daemon)
        if running is not None:
            running.stop()


def _demo_available() -> bool:
    """A checkout (examples/ here) with the agent extra installed."""
    from aiassist.demo import DEMO_APP

    if not DEMO_APP.exists():
        return False
    if importlib.util.find_spec("aiosmtpd") is None or importlib.util.find_spec("jinja2") is None:
        console.print("  demo          not started: `pip install aiassist[agent]` to run it")
        return False
    return True


def _key_once(settings: Settings, path: Path, name: str, scopes: list[str]) -> None:
    """Create a key into `path` unless it is there (auth off: nothing to create)."""
    if not settings.auth or path.exists():
        return
    new = _keys(settings).create(name, scopes, actor="cli:up")
    _write_secret(path, new.token)


def _start_daemon() -> subprocess.Popen[bytes] | None:
    """The model daemon as a child process, when the training extra is installed."""
    if importlib.util.find_spec("sklearn") is None:
        console.print("  model daemon  not started: `pip install aiassist[train]` to train models")
        return None
    console.print("  model daemon  trains, validates and promotes models in the background")
    return subprocess.Popen(
        [sys.executable, "-m", "aiassist", "daemon"], preexec_fn=_die_with_parent
    )


def _stop_child(child: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: a training cut short is redone next pass."""
    child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """End through `finally`, children and all (uvicorn re-raises the SIGTERM it stopped on)."""
    raise SystemExit(0)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when `aiassist up` ends, however it ends (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scope: Annotated[list[str], typer.Option(help="Scope to grant; repeat for several.")],
) -> None:
    """Create a key. Its secret is printed once and never stored."""
    try:
        new = _keys(_settings()).create(name, scope, actor="cli")
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    err.print(
        f"created key [bold]{new.principal.key_id}[/bold]; store it now, it is not shown again:"
    )
    print(new.token)  # stdout alone, so it can be captured by a script


@keys_app.command("list")
def keys_list() -> None:
    """List keys (ids, names, scopes; never secrets)."""
    keys = _keys(_settings())
    table = Table("id", "name", "scopes", "created", "revoked")
    for row in keys.list():
        revoked = row.revoked_at.strftime("%Y-%m-%d %H:%M") if row.revoked_at else ""
        table.add_row(
            row.id, row.name, row.scopes, row.created_at.strftime("%Y-%m-%d %H:%M"), revoked
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    """Revoke a key (every replica stops accepting it within AIASSIST_KEY_CACHE_SECONDS)."""
    if not _keys(_settings()).revoke(key_id, actor="cli"):
        err.print(f"[red]no active key with id {key_id!r}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Create or migrate the schema (SQLite or PostgreSQL, from AIASSIST_DATABASE_URL)."""
    from aiassist.store.db import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url, revision)
    console.print(f"database at {revision}: {_redact(settings.resolved_database_url)}")


# --- models ------------------------------------------------------------------------------
def _registry(settings: Settings) -> ModelRegistry:
    from aiassist.registry.store import ModelRegistry

    return ModelRegistry(settings.resolved_models_dir)


def _module(name: str) -> None:
    from aiassist.modules import UnknownModuleError, get_module

    try:
        get_module(name)
    except UnknownModuleError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@models_app.command("list")
def models_list() -> None:
    """Each module's versions and tags."""
    from aiassist.modules import available_modules

    registry = _registry(_settings())
    table = Table("module", "version", "tags", "framework", "trained on", "created", "verdict")
    for name in available_modules():
        tags = registry.tags(name)
        for version in registry.versions(name):
            manifest = registry.manifest(name, version)
            on = ", ".join(t for t, v in tags.items() if v == version)
            verdict = registry.verdict(name, version)
            rows = (
                f"{manifest.training.rows} {manifest.training.source}" if manifest.training else ""
            )
            table.add_row(
                name,
                version,
                on,
                manifest.framework,
                rows,
                f"{manifest.created_at:%Y-%m-%d %H:%M}",
                f"rejected: {verdict['reason']}" if verdict else "",
            )
    console.print(table)


@models_app.command("show")
def models_show(
    module: str, version: Annotated[str, typer.Argument(help="Version or tag.")] = "stable"
) -> None:
    """A version's manifest (by version name or tag)."""
    _module(module)
    from aiassist.registry.store import RegistryError

    registry = _registry(_settings())
    try:
        resolved = registry.resolve(module, version) or version
        console.print_json(registry.manifest(module, resolved).model_dump_json())
    except RegistryError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _move_tag(
    module: str, tag: str, version: str | None, reason: str, rollback: bool = False
) -> None:
    _module(module)
    from aiassist.registry.store import RegistryError

    settings = _settings()
    registry = _registry(settings)
    try:
        if rollback:
            move = registry.rollback(module, tag=tag, actor="cli", reason=reason)
        else:
            move = registry.set_tag(module, tag, version, actor="cli", reason=reason)
    except RegistryError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    kind = "model.rolled_back" if rollback else "model.tag_moved"
    _audit(settings).append(kind, f"{module}/{tag}", actor="cli", data=move.model_dump(mode="json"))
    console.print(f"{module}: {tag} -> {move.version} (was {move.previous})")


@models_app.command("promote")
def models_promote(module: str, version: str, reason: Annotated[str, typer.Option()] = "") -> None:
    """Point `stable` at a version; services follow within AIASSIST_MODEL_POLL_SECONDS."""
    _move_tag(module, "stable", version, reason)


@models_app.command("rollback")
def models_rollback(
    module: str,
    tag: Annotated[str, typer.Option(help="The tag to move back.")] = "stable",
    reason: Annotated[str, typer.Option()] = "",
) -> None:
    """Move a tag back to the version it named before."""
    _move_tag(module, tag, None, reason, rollback=True)


@models_app.command("tag")
def models_tag(
    module: str,
    tag: str,
    version: Annotated[str, typer.Argument(help="Version; '-' removes the tag.")],
    reason: Annotated[str, typer.Option()] = "",
) -> None:
    """Point any tag at a version."""
    _move_tag(module, tag, None if version == "-" else version, reason)


# --- training ----------------------------------------------------------------------------
def _daemon(settings: Settings) -> ModelDaemon:
    try:
        from aiassist.training.daemon import ModelDaemon
    except ImportError as exc:
        err.print(f"[red]training needs the train extra: pip install aiassist[train] ({exc})[/red]")
        raise typer.Exit(2) from None
    from aiassist.modules import available_modules
    from aiassist.store.db import make_engine, upgrade

    url = settings.resolved_database_url
    if url.startswith("sqlite"):  # the embedded default migrates itself
        upgrade(url)
    return ModelDaemon(
        settings, _registry(settings), make_engine(url), _audit(settings), dict(available_modules())
    )


@app.command()
def train(
    module: str,
    synthetic: Annotated[
        bool, typer.Option(help="Train on the module's simulator, not outcomes.")
    ] = False,
    rows: Annotated[int, typer.Option(min=100, max=5_000_000, help="Simulated examples.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed (training is reproducible).")] = 0,
) -> None:
    """Train a candidate now, judge it on held-out data, promote it if it is as good or better."""
    _module(module)
    from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

    daemon = _daemon(_settings())
    with Progress(SpinnerColumn(), "{task.description}", TimeElapsedColumn(), console=err) as bar:
        bar.add_task(
            f"training {module} on {'simulated' if synthetic else 'recorded'} data", total=None
        )
        result = daemon.train(
            module, synthetic=synthetic, rows=rows, seed=seed, reason="aiassist train"
        )
    color = {"promoted": "green", "rejected": "yellow"}.get(result.action, "red")
    console.print(
        f"[{color}]{result.action}[/{color}] {module} {result.version or ''}: {result.reason}"
    )
    if result.action not in ("promoted", "rejected"):
        raise typer.Exit(1)


@app.command()
def daemon(
    once: Annotated[bool, typer.Option(help="Run one pass and exit.")] = False,
) -> None:
    """The model daemon: retrain from outcomes, validate, promote or reject, forever."""
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    model_daemon = _daemon(settings)
    if once:
        for result in model_daemon.run_once():
            console.print(
                f"{result.module}: {result.action} {result.version or ''} {result.reason}"
            )
        return
    if settings.daemon_metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(
                settings.daemon_metrics_port,
                addr=settings.host,
                registry=model_daemon.metrics.registry,
            )
        except OSError as exc:  # metrics are worth a warning, not a daemon that won't start
            err.print(
                f"[yellow]daemon metrics not served on :{settings.daemon_metrics_port}: "
                f"{exc}[/yellow]"
            )
    # Stop at once, mid-training too: versions and tags are written atomically, and a training
    # cut short is redone on the next pass.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    model_daemon.run_forever(threading.Event())


@app.command("settings")
def show_settings(
    markdown: Annotated[bool, typer.Option(help="Print the reference table as Markdown.")] = False,
) -> None:
    """Show the effective settings (secrets masked), or document them all."""
    if markdown:
        print(settings_markdown())
        return
    table = Table("setting", "value")
    try:
        for values in [_settings(), *(read_settings(cls) for cls in module_settings())]:
            for name in type(values).model_fields:
                value = getattr(values, name)
                shown = "********" if _is_secret(name) and value is not None else str(value)
                table.add_row(f"{values.prefix()}{name.upper()}", _redact(shown))
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(table)


def module_settings() -> list[type[ModuleSettings]]:
    """The settings classes the modules and the drift guard bring, by prefix."""
    from aiassist.drift.settings import DriftSettings

    found = {m.settings for m in available_modules().values() if m.settings is not None}
    return sorted(found | {DriftSettings}, key=lambda cls: cls.prefix())


def settings_markdown() -> str:
    """The settings reference of docs/configuration.md (kept in sync by a test)."""
    sections: list[tuple[str, type[Settings | ModuleSettings]]] = [
        ("Service, daemon, agent and SDK", Settings)
    ] + [(f"`{cls.section()}` (`[{cls.section()}]` in the file)", cls) for cls in module_settings()]
    lines = []
    for title, cls in sections:
        lines += ["", f"### {title}", "", "| variable | default | meaning |", "| --- | --- | --- |"]
        for name, field in cls.model_fields.items():
            default = "" if field.default is None else f"`{field.default}`"
            lines.append(f"| `{cls.prefix()}{name.upper()}` | {default} | {field.description} |")
    return "\n".join(lines).strip()


def _is_secret(name: str) -> bool:
    return "key" in name or "secret" in name


def _redact(url: str) -> str:
    """Hide a password in a URL."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password:
        return url.replace(f":{parts.password}@", ":****@")
    return url


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
