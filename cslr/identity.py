"""Whose stack is this? A Compose project's containers and volumes belong to the folder (the
clone: config.yaml and its .env) that created them, and its data volumes to the secrets they
were made with.

Two clones with the same `project.name` would otherwise share one Compose project: the second
`inv up` adopts the first one's containers and volumes, and Postgres, which keeps the password of
its first start, refuses the new `.env`'s. So before `inv up`, `down`, `ps` and `logs` act:

* ownership: a container's folder is Compose's own label `com.docker.compose.project.working_dir`
  (the generated project's folder, `<clone>/_build`); a volume's is our label `cslr.owner`, set
  when `inv up` creates it. Objects of a folder that still exists are refused (exit 2) with the
  fix; those of a folder that is gone are taken over (a moved or re-cloned checkout);
* secrets: a data volume carries `cslr.secret`, a salted scrypt fingerprint of the secret it was
  created with (never the secret), and `inv up` refuses a `.env` that does not open it before it
  starts anything.

Decisions are pure functions of the labels (which are input like any other: anything may be in
them); the engine is queried through `Engine`, whose `run` is injectable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .errors import PlatformError

PROJECT_LABEL = "com.docker.compose.project"
VOLUME_LABEL = "com.docker.compose.volume"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
OWNER_LABEL = "cslr.owner"  # on volumes: the folder whose `inv up` created them
SECRET_LABEL = "cslr.secret"  # on data volumes: the fingerprint of the secret they were made with
# Folders Compose records as a stack's working dir inside its clone: the generated project
# (`inv`) and compose/ (the plain `docker compose -f compose/compose.yaml` of the docs).
PROJECT_SUBDIRS = ("_build", "compose")

Runner = Callable[..., subprocess.CompletedProcess]


class IdentityError(PlatformError):
    """The stack on the engine is another folder's, or its data another `.env`'s."""

    exit_code = 2


# ----------------------------------------------------------------------------- ownership (pure)


@dataclass(frozen=True)
class Item:
    """A container or volume of a Compose project, as the engine describes it."""

    kind: str  # "container" | "volume"
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def _clean_path(value: object) -> str | None:
    """An absolute, normalised path from a label, or None for anything else."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or len(value) > 4096:
        return None
    return os.path.normpath(value)


def owner_folder(item: Item) -> str | None:
    """The folder (clone) that created `item`, or None when its labels do not say."""
    if item.kind == "container":
        working = _clean_path(item.labels.get(WORKING_DIR_LABEL))
        if working is None:
            return None
        base = os.path.basename(working)
        return os.path.dirname(working) if base in PROJECT_SUBDIRS and working != "/" + base else working
    return _clean_path(item.labels.get(OWNER_LABEL))


def is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@dataclass
class Verdict:
    foreign: dict[str, list[str]] = field(default_factory=dict)  # folder still there -> its objects
    adopted: dict[str, list[str]] = field(default_factory=dict)  # folder gone -> objects taken over
    unknown: list[str] = field(default_factory=list)  # no readable owner (made by hand, or before cslr.owner)


def decide(items: Iterable[Item], folder: str, build_dir: str, gone: Callable[[str], bool]) -> Verdict:
    """Sort a project's objects by owner. Ours: created from `folder` or `build_dir` (or below)."""
    verdict = Verdict()
    for item in items:
        label = f"{item.kind} {shown(item.name)}"
        if item.kind == "container":
            working = _clean_path(item.labels.get(WORKING_DIR_LABEL))
            if working is not None and (is_within(working, folder) or is_within(working, build_dir)):
                continue
        owner = owner_folder(item)
        if owner is None:
            verdict.unknown.append(label)
        elif is_within(owner, folder) or is_within(owner, build_dir):
            continue
        elif gone(owner):
            verdict.adopted.setdefault(owner, []).append(label)
        else:
            verdict.foreign.setdefault(owner, []).append(label)
    return verdict


def shown(path: str) -> str:
    """A path from a label, safe to print (control characters escaped)."""
    return path if path.isprintable() else ascii(path)


def refusal(project: str, folder: str, verdict: Verdict, action: str) -> str | None:
    """The message of a refused `inv ACTION`, or None when nothing is another folder's."""
    if not verdict.foreign:
        return None
    lines = [f"refusing `inv {action}`: Compose project {project!r} on this Docker engine belongs to another folder, not to {shown(folder)}:"]
    for owner, names in sorted(verdict.foreign.items()):
        more = f" and {len(names) - 4} more" if len(names) > 4 else ""
        lines.append(f"  {shown(owner)}: {', '.join(names[:4])}{more}")
    lines.append("Two folders with one project name would share containers and volumes (and the second's .env does not open the first's data). Either:")
    lines.append(
        "  - give this folder a stack of its own: `inv init --project NAME` (a free project name, subnet and host ports, written to .env), then `inv up`; or"
    )
    lines.append(
        f"  - act on that stack from its own folder: `cd {shown(sorted(verdict.foreign)[0])} && inv {action}` (`inv down` there stops it; volumes are kept)."
    )
    return "\n".join(lines)


def notes(verdict: Verdict) -> list[str]:
    out = [f"taking over {', '.join(names)} of {shown(owner)} (that folder no longer exists)" for owner, names in sorted(verdict.adopted.items())]
    if verdict.unknown:
        out.append(f"cannot tell which folder created {', '.join(verdict.unknown)} (no owner label: made by hand or by an older version)")
    return out


def folder_gone(path: str) -> bool:
    """Only a folder that is certainly absent is gone; one we may not look into is still someone's."""
    try:
        os.stat(path)
        return False
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- fingerprints (pure)

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB, tens of ms: cheap once per `up`, slow to guess
# Bounds on what a label may ask for (the label is input: a huge n would be a memory bomb).
MAX_LOG2_N, MAX_R, MAX_P = 20, 16, 4
SALT_BYTES, HASH_BYTES = 16, 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, maxmem=2**27, dklen=HASH_BYTES)


def fingerprint(secret: str, salt: bytes | None = None) -> str:
    """`scrypt$N$R$P$SALT$HASH` of `secret` with a fresh random salt: what a data volume's
    `cslr.secret` label holds. Tells whether a secret is the one, never what it is."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    return "$".join([SCHEME, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(_scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))])


def parse_fingerprint(label: object) -> tuple[int, int, int, bytes, bytes] | None:
    """(n, r, p, salt, hash) of a well-formed label within the bounds above; None otherwise."""
    if not isinstance(label, str) or len(label) > 256:
        return None
    parts = label.split("$")
    if len(parts) != 6 or parts[0] != SCHEME or not all(x.isascii() and x.isdigit() and len(x) <= 8 for x in parts[1:4]):
        return None
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or n > 2**MAX_LOG2_N or not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        return None
    try:
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, TypeError):
        return None
    if not 8 <= len(salt) <= 64 or len(digest) != HASH_BYTES:
        return None
    return n, r, p, salt, digest


def opens(secret: str, label: object) -> bool | None:
    """Does `secret` match the fingerprint `label`? None: the label is not a readable fingerprint."""
    parsed = parse_fingerprint(label)
    if parsed is None:
        return None
    n, r, p, salt, digest = parsed
    return hmac.compare_digest(_scrypt(secret, salt, n, r, p), digest)


@dataclass(frozen=True)
class SecretCheck:
    volume: str
    secret_env: str  # the .env variable that must open it
    result: bool | None  # True: opens it; False: another secret made it; None: no readable fingerprint


def check_secrets(volumes: Iterable[Item], secret_of: Mapping[str, str], env: Mapping[str, str], key_of: Mapping[str, str] | None = None) -> list[SecretCheck]:
    """For each existing data volume, whether the current secret opens it. A volume's key (its
    Compose name, e.g. postgres-data, which `secret_of` maps to the secret's variable) is
    `key_of[engine name]` (the declared volumes) or else its `com.docker.compose.volume` label."""
    out = []
    for item in volumes:
        key = (key_of or {}).get(item.name) or item.labels.get(VOLUME_LABEL)
        if not isinstance(key, str) or key not in secret_of:
            continue
        name = secret_of[key]
        out.append(SecretCheck(item.name, name, opens(env.get(name, ""), item.labels.get(SECRET_LABEL))))
    return out


def secret_refusal(checks: Iterable[SecretCheck], env_path: str, generated_env: str | None = None) -> str | None:
    """The message of a refused `inv up`; `generated_env`: a generated env file (from before
    this run) that may still hold the secrets that made the data."""
    wrong = [c for c in checks if c.result is False]
    if not wrong:
        return None
    lines = [f"refusing `inv up`: {env_path} does not open this stack's data; nothing was started or changed:"]
    lines += [f"  volume {c.volume} was created with another {c.secret_env} than the one in {env_path}" for c in wrong]
    lines.append("Either:")
    where = f" ({generated_env}, written by the last `inv up`, may still hold them)" if generated_env else ""
    lines.append(
        f"  - put back the .env that created it, or its {', '.join(sorted({c.secret_env for c in wrong}))} lines{where}: docs/stacks.md#a-lost-env; or"
    )
    lines.append(
        "  - if that data can go: back it up first (docs/stacks.md#backing-up-the-data), then `inv down --volumes --yes`; the next `inv up` starts empty volumes with this .env."
    )
    return "\n".join(lines)


def secret_notes(checks: Iterable[SecretCheck]) -> list[str]:
    return [
        f"volume {c.volume} has no secret fingerprint (created by an older version or by hand): cannot tell whether {c.secret_env} opens it"
        for c in checks
        if c.result is None
    ]


# ----------------------------------------------------------------------------- the engine


def _inspect_json(text: str) -> list[dict]:
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _labels(value: object) -> dict[str, str]:
    return {str(k): v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}


@dataclass
class Engine:
    """The few `docker` calls this module needs. A call the engine does not answer gives None
    (preflight says why); nothing here changes anything but `create_volume`."""

    run: Runner = subprocess.run

    def _call(self, argv: list[str]) -> subprocess.CompletedProcess | None:
        try:
            return self.run(argv, capture_output=True, text=True, timeout=60)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return None

    def containers(self, project: str) -> list[Item] | None:
        ids = self._call(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={project}"])
        if ids is None or ids.returncode != 0:
            return None
        if not ids.stdout.split():
            return []
        proc = self._call(["docker", "container", "inspect", *ids.stdout.split()])
        if proc is None:
            return None
        # A container removed between the two calls is simply not listed.
        out = []
        for d in _inspect_json(proc.stdout):
            labels = _labels((d.get("Config") or {}).get("Labels") if isinstance(d.get("Config"), dict) else None)
            if labels.get(PROJECT_LABEL) == project:
                out.append(Item("container", str(d.get("Name", "")).lstrip("/"), labels))
        return out

    def volumes(self, project: str, names: Iterable[str]) -> list[Item] | None:
        """The project's volumes: those labelled with it, and those of `names` (the declared ones)."""
        listed = self._call(["docker", "volume", "ls", "-q"])
        if listed is None or listed.returncode != 0:
            return None
        labelled = self._call(["docker", "volume", "ls", "-q", "--filter", f"label={PROJECT_LABEL}={project}"])
        wanted = set(names) | set(labelled.stdout.split() if labelled is not None and labelled.returncode == 0 else [])
        present = [v for v in listed.stdout.split() if v in wanted]
        if not present:
            return []
        proc = self._call(["docker", "volume", "inspect", *present])
        if proc is None:
            return None
        return [Item("volume", str(d.get("Name", "")), _labels(d.get("Labels"))) for d in _inspect_json(proc.stdout)]

    def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        argv = ["docker", "volume", "create"]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        proc = self._call([*argv, name])
        if proc is None or proc.returncode != 0:
            raise PlatformError(f"docker volume create {name} failed: {(proc.stderr if proc else 'no answer').strip()}")


# ----------------------------------------------------------------------------- what the tasks call


@dataclass(frozen=True)
class Scope:
    """One stack's identity: its Compose project, its folder (config.yaml and .env) and
    generated project, the volumes it declares (Compose key -> engine name)."""

    project: str
    folder: str
    build_dir: str
    volumes: Mapping[str, str]


def claim(scope: Scope, engine: Engine, action: str, gone: Callable[[str], bool] = folder_gone) -> list[str]:
    """Raise IdentityError if the project's containers or volumes are another folder's; return
    notes (objects taken over, objects without an owner). An engine that does not answer: no
    claim (the command itself, or preflight, says why)."""
    containers = engine.containers(scope.project)
    volumes = engine.volumes(scope.project, scope.volumes.values())
    items = (containers or []) + (volumes or [])
    verdict = decide(items, scope.folder, scope.build_dir, gone)
    message = refusal(scope.project, scope.folder, verdict, action)
    if message:
        raise IdentityError(message)
    return notes(verdict)


def check_data(
    scope: Scope, engine: Engine, secret_of: Mapping[str, str], env: Mapping[str, str], env_path: str, generated_env: str | None = None
) -> list[str]:
    """Raise IdentityError if a data volume was made with another secret than `env`'s."""
    volumes = engine.volumes(scope.project, scope.volumes.values()) or []
    checks = check_secrets(volumes, secret_of, env, {name: key for key, name in scope.volumes.items()})
    message = secret_refusal(checks, env_path, generated_env)
    if message:
        raise IdentityError(message)
    return secret_notes(checks)


def volume_labels(project: str, key: str, folder: str, secret: str | None) -> dict[str, str]:
    labels = {PROJECT_LABEL: project, VOLUME_LABEL: key, OWNER_LABEL: folder}
    if secret is not None:
        labels[SECRET_LABEL] = fingerprint(secret)
    return labels


def create_volumes(scope: Scope, engine: Engine, secret_of: Mapping[str, str], env: Mapping[str, str]) -> list[str]:
    """Before `compose up`: create the declared volumes that do not exist yet, labelled with
    their owner folder (and, for data volumes, the fingerprint of their secret). Compose then
    uses them as its own (same project and volume labels)."""
    existing = {v.name for v in engine.volumes(scope.project, scope.volumes.values()) or []}
    made = []
    for key, name in scope.volumes.items():
        if name in existing:
            continue
        secret = env.get(secret_of[key], "") if key in secret_of else None
        engine.create_volume(name, volume_labels(scope.project, key, scope.folder, secret))
        made.append(name)
    return [f"created volume(s) {', '.join(made)} (owner {scope.folder})"] if made else []


def declared_volumes(compose_doc: Mapping, project: str) -> dict[str, str]:
    """Compose key -> engine name of the volumes the merged project declares and Compose would
    create (not external ones, nor ones with their own driver: Compose makes those)."""
    out = {}
    for key, spec in (compose_doc.get("volumes") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("external") or spec.get("driver") not in (None, "local") or spec.get("driver_opts"):
            continue
        out[str(key)] = str(spec.get("name") or f"{project}_{key}")
    return out


def scope_of(stack) -> Scope:
    """The Scope of a `cslr.stack.Stack`."""
    folder = str(Path(stack.cfg.config_path).resolve().parent)
    return Scope(stack.project, folder, str(Path(stack.build_dir).resolve()), declared_volumes(stack.doc(), stack.project))
