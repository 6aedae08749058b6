"""`fleet token create|list|revoke` (API tokens with a role) and `fleet key rotate|list|revoke` (the keys
claims are signed with). A token's secret is printed once, on creation, and never stored."""

import typer

from reconciler.cli.render import table
from reconciler.cli.settings import Settings
from reconciler.documents import BadInput
from specs.names import validate_name
from state.access import Access, Role

app = typer.Typer(help="API tokens: billing (write tenants, mint claims), operator (all), viewer (read).",
                  no_args_is_help=True)
keys = typer.Typer(help="Keys claims are signed with: rotate without logging anyone out, revoke to.",
                   no_args_is_help=True)


def _access(ctx: typer.Context) -> Access:
    settings: Settings = ctx.obj
    return Access(settings.open_store(create=True))


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="A DNS label naming who holds it, e.g. billing-prod."),
    role: str = typer.Option(..., "--role", help="billing, operator or viewer."),
) -> None:
    """Create a token and print its secret (shown this once)."""
    try:
        validate_name(name)
    except ValueError as error:
        raise BadInput(f"--name: {error}") from error
    if role not in {r.value for r in Role}:
        raise BadInput(f"--role: {role!r} must be one of billing, operator, viewer")
    _token, secret = _access(ctx).create_token(name=name, role=Role(role))
    typer.echo(secret)
    typer.echo(f"token/{name} created with role {role}; the secret above is shown once", err=True)


@app.command("list")
def list_tokens(ctx: typer.Context) -> None:
    """Tokens, their roles and whether they are revoked (never their secrets)."""
    rows = [[t.name, t.role.value, f"{t.created_at:%Y-%m-%d %H:%M}" if t.created_at else "",
             f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-"] for t in _access(ctx).list_tokens()]
    typer.echo(table(["NAME", "ROLE", "CREATED", "REVOKED"], rows))


@app.command("revoke")
def revoke(ctx: typer.Context, name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token: every request with it gets 401 from now on."""
    _access(ctx).revoke_token(name)
    typer.echo(f"token/{name} revoked")


@keys.command("rotate")
def rotate(ctx: typer.Context) -> None:
    """Sign new claims with a new key; claims signed before stay valid until they expire."""
    key = _access(ctx).rotate_signing_key()
    typer.echo(f"key/{key.kid} is now signing claims")


@keys.command("list")
def list_keys(ctx: typer.Context) -> None:
    """Signing keys (never their secrets): active, retired (still verifies) or revoked."""
    rows = [[k.kid, "revoked" if k.revoked_at else "retired" if k.retired_at else "active",
             f"{k.created_at:%Y-%m-%d %H:%M}" if k.created_at else ""] for k in _access(ctx).signing_keys()]
    typer.echo(table(["KID", "STATE", "CREATED"], rows))


@keys.command("revoke")
def revoke_key(ctx: typer.Context, kid: str = typer.Argument(..., help="The key id (fleet key list).")) -> None:
    """Refuse every claim this key signed (within a second on every gateway)."""
    _access(ctx).revoke_signing_key(kid)
    typer.echo(f"key/{kid} revoked")
