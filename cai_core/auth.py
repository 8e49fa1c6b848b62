"""Who may use the app when it listens beyond this machine.

On 127.0.0.1 (the default) the app asks for no login: whoever reaches it is on the machine already. With
`cai app --host ADDRESS` every page asks for one first, as Jupyter does:
- the operator's token: `$CAI_APP_TOKEN`, or one generated at start and printed in the URL (`?token=...`);
  it logs in as `operator`;
- a named login per annotator (`cai app --add-login NAME`), whose name becomes their identity on the
  Annotate and Traces pages.

Only hashes are kept: the logins file holds scrypt hashes, and the server hands its pages the token's hash
(`$CAI_APP_TOKEN_HASH`), never the token. Secrets are compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
OPERATOR = "operator"
TOKEN_ENV = "CAI_APP_TOKEN"  # the operator's token, read by `cai app` only
TOKEN_HASH_ENV = "CAI_APP_TOKEN_HASH"  # what `cai app` hands the pages
LOGINS_ENV = "CAI_APP_LOGINS"
LOGINS_FILE = "app_logins.json"
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # about 50 ms a check: slow for guessing, quick for one login


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def matches(secret: str, stored: str) -> bool:
    try:
        scheme, salt, _ = stored.split("$")
    except ValueError:
        return False
    return scheme == "scrypt" and hmac.compare_digest(hash_secret(secret, bytes.fromhex(salt)), stored)


def add_login(data_dir: Path, name: str) -> str:
    """Create or reset NAME's login in the data folder's logins file; returns the new password (shown once,
    stored hashed)."""
    path, name = data_dir / LOGINS_FILE, name.strip()
    if not name or name == OPERATOR:
        raise ValueError(f"login name {name!r}: give a name other than {OPERATOR!r}")
    logins = json.loads(path.read_text()) if path.exists() else {}
    password = secrets.token_urlsafe(12)
    logins[name] = hash_secret(password)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(logins, indent=1))
    tmp.chmod(0o600)
    tmp.replace(path)
    return password


@dataclass(frozen=True)
class Access:
    """What a page asks of a visitor: nothing (`required` false), or the token or a named login."""

    required: bool
    token_hash: str | None = None
    logins_file: Path | None = None

    @classmethod
    def from_env(cls) -> Access:
        token_hash, logins = os.environ.get(TOKEN_HASH_ENV), os.environ.get(LOGINS_ENV)
        return cls(bool(token_hash), token_hash, Path(logins) if logins else None)

    def env(self) -> dict[str, str]:
        """The variables that hand this access to the app's process."""
        return {TOKEN_HASH_ENV: self.token_hash or "", LOGINS_ENV: str(self.logins_file or "")}

    def login(self, name: str, secret: str) -> str | None:
        """The identity NAME and SECRET log in as, or None. An empty name (or `operator`) tries the token."""
        name = name.strip()
        if name and name != OPERATOR:
            logins = json.loads(self.logins_file.read_text()) if self.logins_file and self.logins_file.exists() else {}
            return name if name in logins and matches(secret, logins[name]) else None
        return OPERATOR if self.token_hash and matches(secret, self.token_hash) else None


def access_for(host: str, data_dir: Path) -> tuple[Access, str | None]:
    """The access a server on HOST needs, and the token to print when it was generated here (else None).
    A local host needs no login unless the operator set a token."""
    token = os.environ.get(TOKEN_ENV)
    if host in LOCAL_HOSTS and not token:
        return Access(False), None
    generated = None if token else secrets.token_urlsafe(24)
    return Access(True, hash_secret(token or generated), data_dir / LOGINS_FILE), generated
