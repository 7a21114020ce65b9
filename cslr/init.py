"""`inv init`: write config.yaml (if absent) and .env with strong random secrets (mode 0600)."""

from __future__ import annotations

import secrets
from pathlib import Path

from .config import ROOT, format_dotenv, parse_dotenv
from .errors import PlatformError
from .fsutil import write_atomic

SECRET_ENV = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MARIMO_TOKEN", "RAY_AUTH_TOKEN", "CSLR_CONTROL_SECRET")


def new_secrets(token=secrets.token_urlsafe) -> dict[str, str]:
    # 32 bytes of entropy each; URL-safe so they can sit in URLs (Redis, Postgres) unquoted.
    return {name: token(32) for name in SECRET_ENV}


def init(config_path: Path, env_path: Path, force: bool = False) -> list[str]:
    """Create the files; return what was done. Existing files are kept unless `force`."""
    done = []
    if not config_path.exists() or force:
        template = ROOT / "config.yaml"
        if config_path.resolve() != template.resolve():
            text = template.read_text().replace("$schema=schema/", f"$schema={_rel_schema(config_path)}")
            write_atomic(config_path, text, 0o644)
            done.append(f"wrote {config_path}")
        else:
            done.append(f"kept {config_path} (it is the project's documented default)")
    else:
        done.append(f"kept {config_path} (exists; --force overwrites)")
    if env_path.exists() and not force:
        existing = parse_dotenv(env_path.read_text(), str(env_path))
        missing = [k for k in SECRET_ENV if not existing.get(k, ("",))[0]]
        if missing:
            raise PlatformError(f"{env_path} exists but lacks {', '.join(missing)}; add them or rerun with --force (which replaces every secret)")
        env_path.chmod(0o600)
        done.append(f"kept {env_path} (exists; --force regenerates every secret)")
        return done
    header = "Secrets of this machine's CSLR stack; written by `inv init`. Never commit this file.\nPer-machine overrides of config.yaml (see docs/config-reference.md) may follow."
    write_atomic(env_path, format_dotenv(new_secrets(), header), 0o600)
    done.append(f"wrote {env_path} (mode 0600) with new {', '.join(SECRET_ENV)}")
    return done


def _rel_schema(config_path: Path) -> str:
    schema_dir = ROOT / "schema"
    try:
        import os

        return os.path.relpath(schema_dir, config_path.resolve().parent) + "/"
    except ValueError:
        return str(schema_dir) + "/"


