"""`fleet doctor`: checks this host for the driver (kernel features, tools and their versions, cgroups, KSM,
the pool) and the store, and says for each problem what to run. Exit 1 when something must be fixed.

It only looks: it never installs, mounts, enables or migrates anything (the store is opened without
migrating it). Host checks come from the driver (`drivers.host_checks`): this module touches no host.
"""

from pathlib import Path

import typer

from reconciler.cli.render import table
from reconciler.cli.settings import Settings
from specs import CheckStatus, FleetError, HostCheck


def store_check(settings: Settings) -> HostCheck:
    from state import Store

    url = settings.db_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return HostCheck(name="store", status=CheckStatus.WARNING, detail=f"no store at {url} yet",
                         fix="fleet up (or fleet node init) creates it; or point at one with --db URL or FLEET_DB")
    try:
        store = Store(url, migrate_schema=False)
    except FleetError as error:
        return HostCheck(name="store", status=CheckStatus.FAILED, detail=f"{url}: {error}",
                         fix="check the URL, that the server runs and that this host may reach it")
    try:
        revision = store.current_revision()
    except FleetError as error:
        return HostCheck(name="store", status=CheckStatus.FAILED, detail=f"{url}: {error}",
                         fix="check that the database server runs and accepts this host and user")
    except Exception as error:  # an unmigrated or foreign database: a missing table is a library error here
        return HostCheck(name="store", status=CheckStatus.FAILED, detail=f"{url}: {type(error).__name__}",
                         fix="run `fleet up` (or `fleet agent`) once to create or migrate the schema")
    finally:
        store.close()
    return HostCheck(name="store", status=CheckStatus.OK, detail=f"{url} reachable, revision {revision}")


def doctor(
    ctx: typer.Context,
    driver_name: str = typer.Option("nspawn", "--driver", help="The driver to check the host for."),
    pool: Path | None = typer.Option(None, "--pool", help="The btrfs filesystem Fleet uses, if not DATA_DIR/pool."),
) -> None:
    """Check this host and the store: kernel features, tools, cgroups, KSM, the pool; say what to fix."""
    from drivers import available_drivers, host_checks

    if driver_name not in available_drivers():
        from reconciler.documents import BadInput

        raise BadInput(f"--driver: unknown driver {driver_name!r}; choose one of: {', '.join(available_drivers())}")
    settings: Settings = ctx.obj
    options = {"data_dir": settings.resolved_data_dir, "pool_path": pool} if driver_name == "nspawn" else {}
    checks = [*host_checks(driver_name, **options), store_check(settings)]
    rows = [[check.status.value.upper(), check.name, check.detail] for check in checks]
    typer.echo(table(["STATUS", "CHECK", "FOUND"], rows))
    to_fix = [check for check in checks if check.status != CheckStatus.OK and check.fix]
    if to_fix:
        typer.echo("\nTo fix:")
        for check in to_fix:
            typer.echo(f"  {check.name}: {check.fix}")
    failed = [check for check in checks if check.status == CheckStatus.FAILED]
    if failed:
        typer.echo(f"\n{len(failed)} problem(s) keep the {driver_name} driver or the store from working.", err=True)
        raise typer.Exit(1)
    typer.echo(f"\nThis host can run the {driver_name} driver" + (" (with warnings above)." if to_fix else "."))
