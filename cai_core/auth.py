"""Who may use the app when it listens beyond this machine, and what each login may do.

On 127.0.0.1 (the default) the app asks for no login: whoever reaches it is on the machine already. With
`cai app --host ADDRESS` (or a token set) `cai app` puts a front door before the pages (`cai_core.frontdoor`),
which asks for a login first:
- the operator's token: `$CAI_APP_TOKEN`, or one generated at start and printed in the URL (`?token=...`);
  it logs in as `operator`, with the operator's role;
- a named login (`cai app --add-login NAME`), an annotator unless made with `--role operator`.

Roles: an annotator annotates, gives trace verdicts and reads the dashboards; an operator does everything.
The front door hands each request's identity to the pages in a header signed with a key only it and the
Streamlit process know (`IDENTITY_KEY_ENV`). The library enforces the roles itself: every operator-only entry
point calls `require_operator`, which asks `current_actor()`. The UI registers the resolver that reads the
verified header (this package never imports streamlit). Fail-closed: in a process the front door serves, no
resolved actor means no operator; in the command line (no key in the environment) the user is the operator.

Only hashes are kept: the logins file holds scrypt hashes; secrets are compared with `hmac.compare_digest`, and
an unknown name is checked against a dummy hash so that it takes as long to refuse as a known one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote, unquote

from .workspace import write_file_atomically

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ANNOTATOR, OPERATOR = "annotator", "operator"
ROLES = (ANNOTATOR, OPERATOR)
TOKEN_ENV = "CAI_APP_TOKEN"  # the operator's token, read by `cai app` only
# Set by `cai app` in the Streamlit process it serves behind the front door: the key that signs identities,
# and by its presence the sign that this process serves logins (so that no actor means no operator).
IDENTITY_KEY_ENV = "CAI_APP_IDENTITY_KEY"
IDENTITY_HEADER = "X-CAI-Identity"
# The front door's own pages; the app links to the logout one
LOGIN_PATH, LOGOUT_PATH = "/_cai/login", "/_cai/logout"
LOGINS_FILE = "app_logins.json"
SCRYPT_N = 2**14  # about 50 ms a check: slow for guessing, quick for one login


class NotAllowed(PermissionError):
    """An action the logged-in role may not take."""


@dataclass(frozen=True)
class Actor:
    name: str
    role: str

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR


LOCAL_OPERATOR = Actor(OPERATOR, OPERATOR)  # the command line's user, and the app on 127.0.0.1 without a token


def hash_secret(secret: str, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=8, p=1)
    return f"scrypt${n}${salt.hex()}${digest.hex()}"


def matches(secret: str, stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) == 3:  # written before the cost was kept in the hash
        parts.insert(1, str(SCRYPT_N))
    try:
        scheme, n, salt, digest = parts
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=8, p=1)
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


@cache
def _dummy_hash(n: int) -> str:
    return hash_secret(secrets.token_urlsafe(16), n=n)


def read_logins(path: Path | None) -> dict[str, dict]:
    """NAME → {"hash", "role"}. A file written before roles holds NAME → hash: those logins are annotators."""
    if not path or not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a logins file ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a logins file (expected an object of names)")
    logins = {}
    for name, entry in raw.items():
        entry = {"hash": entry, "role": ANNOTATOR} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or entry.get("role") not in ROLES or not isinstance(entry.get("hash"), str):
            raise ValueError(f"{path}: login {name!r} needs a hash and a role ({' or '.join(ROLES)})")
        logins[name] = entry
    return logins


def add_login(data_dir: Path, name: str, role: str = ANNOTATOR) -> str:
    """Create or reset NAME's login in the data folder's logins file; returns the new password (shown once,
    stored hashed)."""
    path, name = data_dir / LOGINS_FILE, name.strip()
    if not name or name == OPERATOR:
        raise ValueError(f"login name {name!r}: give a name other than {OPERATOR!r}")
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    logins = read_logins(path)
    password = secrets.token_urlsafe(12)
    logins[name] = {"hash": hash_secret(password), "role": role}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, lambda out: out.write(json.dumps(logins, indent=1).encode()), mode=0o600)
    return password


@dataclass(frozen=True)
class Access:
    """What the front door asks of a visitor: nothing (`required` false), or the token or a named login."""

    required: bool
    token_hash: str | None = None
    logins_file: Path | None = None

    def login(self, name: str, secret: str) -> Actor | None:
        """Who NAME and SECRET log in as, or None. An empty name (or `operator`) tries the token. Every attempt
        runs one scrypt check, an unknown name's against a dummy hash: a refusal takes as long whether or not
        the name exists, so names cannot be told by timing."""
        name = name.strip()
        if not name or name == OPERATOR:
            stored, actor = self.token_hash, LOCAL_OPERATOR
        else:
            entry = read_logins(self.logins_file).get(name)
            stored, actor = (entry["hash"], Actor(name, entry["role"])) if entry else (None, None)
        ok = matches(secret, stored or _dummy_hash(SCRYPT_N))
        return actor if ok and stored else None


def access_for(host: str, data_dir: Path) -> tuple[Access, str | None]:
    """The access a server on HOST needs, and the token to print when it was generated here (else None).
    A local host needs no login unless the operator set a token."""
    token = os.environ.get(TOKEN_ENV)
    if host in LOCAL_HOSTS and not token:
        return Access(False), None
    generated = None if token else secrets.token_urlsafe(24)
    return Access(True, hash_secret(token or generated), data_dir / LOGINS_FILE), generated


# --- the identity the front door hands the pages ---------------------------------------------------------


def _mac(key: str, payload: str) -> str:
    return hmac.new(key.encode(), payload.encode(), hashlib.sha256).hexdigest()


def sign_identity(actor: Actor, key: str) -> str:
    """The header value naming ACTOR, which only a holder of KEY can make."""
    payload = f"{quote(actor.name, safe='')};{actor.role}"
    return f"{payload};{_mac(key, payload)}"


def verify_identity(value: str | None, key: str) -> Actor | None:
    """The actor a signed header value names, or None if it is missing, malformed or not signed with KEY."""
    name, _, rest = (value or "").partition(";")
    role, _, mac = rest.partition(";")
    if not name or role not in ROLES or not hmac.compare_digest(mac, _mac(key, f"{name};{role}")):
        return None
    return Actor(unquote(name), role)


def login_required() -> bool:
    """Whether this process serves logins (the Streamlit process behind `cai app`'s front door)."""
    return bool(os.environ.get(IDENTITY_KEY_ENV))


_resolver: Callable[[], Actor | None] | None = None


def set_actor_resolver(resolver: Callable[[], Actor | None]) -> None:
    """Register how this process learns who is acting (the UI: the verified header of the current request)."""
    global _resolver
    _resolver = resolver


def current_actor() -> Actor | None:
    """Who is acting: the command line's user is the operator; in a process that serves logins, whoever the
    registered resolver names, else nobody."""
    if not login_required():
        return LOCAL_OPERATOR
    return _resolver() if _resolver else None


def require_operator(action: str) -> Actor:
    """Raise NotAllowed unless the actor is an operator; ACTION names what was refused ("save a constitution")."""
    actor = current_actor()
    if actor is None:
        raise NotAllowed(f"{action}: nobody is logged in")
    if not actor.is_operator:
        raise NotAllowed(f"{action}: operators only ({actor.name} is logged in as an {actor.role})")
    return actor


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """ENV for a process started from the app (a job): it runs what an operator allowed, as the command line
    does, so it gets neither the identity key nor the sign that logins are served."""
    return {k: v for k, v in env.items() if k not in (IDENTITY_KEY_ENV, TOKEN_ENV)}
