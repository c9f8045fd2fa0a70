"""CURVE (CurveZMQ) authentication and encryption for serve's ports, with key files.

Key files are the ones ``zmq.auth.create_certificates`` writes (``spikereveal keys generate``): ``NAME.key``
holds a public key (copy it to the peers that must trust you), ``NAME.key_secret`` the public and the
secret key (mode 0600; never leaves its host). A socket that *binds* (serve's job, result and output ports;
the rig's publishers) is a CURVE server: it has its own key pair and admits only clients whose public key is
a ``*.key`` file in its allow-list folder (checked by a ``zmq.auth.thread.ThreadAuthenticator`` with
``configure_curve(domain='*', location=DIR)``; one per ZeroMQ context). A socket that *connects* (workers,
serve's rig subscriptions, viewers) is a CURVE client: its own key pair and the server's public key.

Without keys, ZeroMQ has no authentication at all: anyone who reaches a port reads what it sends or writes
into it. :func:`require_keys` therefore refuses a job/result endpoint on a non-loopback tcp address without
keys; loopback tcp (127.0.0.0/8, localhost, [::1]), ipc:// and inproc:// stay open (same-host local workers).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spikereveal.errors import ConfigError

__all__ = ["ServerKeys", "ClientKeys", "generate_keys", "load_key_pair", "load_public_key", "is_loopback",
           "require_keys", "apply_server", "apply_client", "start_authenticator", "KEYS_HINT"]

logger = logging.getLogger(__name__)

KEYS_HINT = "create key pairs with 'spikereveal keys generate --out DIR --name NAME' (see stream/README.md, 'Keys')"
_PUBLIC_SUFFIX, _SECRET_SUFFIX = ".key", ".key_secret"


@dataclass(frozen=True)
class ServerKeys:
    """A binding socket's keys: its own ``.key_secret`` file and the folder of client ``*.key`` files it admits."""

    secret_key_file: str
    allow_keys_dir: str

    def __post_init__(self):
        load_key_pair(self.secret_key_file)
        allowed_public_keys(self.allow_keys_dir)


@dataclass(frozen=True)
class ClientKeys:
    """A connecting socket's keys: its own ``.key_secret`` file and the server's public ``.key`` file."""

    secret_key_file: str
    server_key_file: str

    def __post_init__(self):
        load_key_pair(self.secret_key_file)
        load_public_key(self.server_key_file)


def _zmq():
    import zmq

    return zmq


def _read_key_file(path, what: str) -> tuple[bytes, bytes | None]:
    from zmq.auth import load_certificate
    from zmq.utils import z85

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; {KEYS_HINT}")
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not a ZeroMQ key file ({exc}); {KEYS_HINT}") from None
    for key in (public, secret):
        if key is None:
            continue
        try:
            ok = len(key) == 40 and len(z85.decode(key)) == 32
        except (ValueError, KeyError, TypeError, OverflowError):
            ok = False
        if not ok:
            raise ConfigError(f"{what} {path} holds a malformed key (expected 40 Z85 characters); {KEYS_HINT}")
    return public, secret


def load_key_pair(path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file; ConfigError (saying what to do) otherwise."""
    zmq = _zmq()
    public, secret = _read_key_file(path, "the secret key file")
    if secret is None:
        raise ConfigError(f"{path} holds only a public key: give the '{_SECRET_SUFFIX}' file of the pair; "
                          f"{KEYS_HINT}")
    if zmq.curve_public(secret) != public:
        raise ConfigError(f"{path}: its public and secret keys do not belong together; {KEYS_HINT}")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        logger.warning("%s is readable by other users (mode %o): chmod 600 it", path, mode)
    return public, secret


def load_public_key(path) -> bytes:
    """The Z85 public key of a ``.key`` (or ``.key_secret``) file."""
    return _read_key_file(path, "the public key file")[0]


def allowed_public_keys(folder) -> list[bytes]:
    """The public keys of the ``*.key`` files in an allow-list folder (at least one, or ConfigError)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"the allow-list folder {folder} does not exist; create it and copy the clients' "
                          f"public '{_PUBLIC_SUFFIX}' files into it ({KEYS_HINT})")
    files = sorted(folder.glob(f"*{_PUBLIC_SUFFIX}"))
    if not files:
        raise ConfigError(f"the allow-list folder {folder} holds no '*{_PUBLIC_SUFFIX}' file: copy the public key "
                          f"of every client (worker, viewer, serve) that may connect into it ({KEYS_HINT})")
    return [load_public_key(f) for f in files]


def generate_keys(out_dir, name: str = "spikereveal", force: bool = False) -> tuple[Path, Path]:
    """Write ``out_dir/NAME.key`` (public) and ``out_dir/NAME.key_secret`` (mode 0600) with
    ``zmq.auth.create_certificates``; refuses to overwrite either unless ``force``. Returns both paths."""
    from zmq.auth import create_certificates

    if not name or name != Path(name).name or name.startswith("."):
        raise ConfigError(f"the key name must be a plain file name such as 'worker1', got {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    public, secret = out_dir / f"{name}{_PUBLIC_SUFFIX}", out_dir / f"{name}{_SECRET_SUFFIX}"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        raise ConfigError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: choose another --name or --out, or pass "
                          "--force to replace the pair (peers that trust the old public key must get the new one)")
    staging = tempfile.mkdtemp(prefix=".keys-", dir=out_dir)  # mode 0700: the secret is never world-readable
    try:
        made_public, made_secret = create_certificates(staging, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp on a loopback address (127.0.0.0/8, localhost, [::1])."""
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.split(";")[-1]  # "source;destination" form: the address that is bound/connected is last
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # *, an interface name or a host name: reachable from outside


def require_keys(endpoint: str, what: str, keys) -> None:
    """Refuse to bind ``endpoint`` (``what``: e.g. 'the job endpoint') without keys unless it is loopback."""
    if keys is None and not is_loopback(endpoint):
        raise ConfigError(
            f"refusing to bind {what} {endpoint} without CURVE keys: anyone who reaches it could read the camera "
            "data or inject frames. Either bind a loopback address (tcp://127.0.0.1:PORT, ipc://PATH) or "
            f"{KEYS_HINT}, then give serve --secret-key serve.key_secret --allow-keys DIR (the workers' public "
            "keys) and each worker --secret-key worker.key_secret --server-key serve.key")


def apply_server(socket, keys: ServerKeys) -> None:
    """Make ``socket`` a CURVE server with ``keys`` (before bind; the context's authenticator checks clients)."""
    public, secret = load_key_pair(keys.secret_key_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def apply_client(socket, keys: ClientKeys) -> None:
    """Make ``socket`` a CURVE client of the server whose public key is ``keys.server_key_file`` (before connect)."""
    public, secret = load_key_pair(keys.secret_key_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = load_public_key(keys.server_key_file)


def start_authenticator(context, keys: ServerKeys, admit_own_key: bool = False):
    """Start a ThreadAuthenticator on ``context`` admitting the public keys in ``keys.allow_keys_dir``
    (every CURVE server socket of the context) and, with ``admit_own_key``, the server's own public key (serve's
    local worker processes connect with it); returns it (``stop()`` it before the context terminates)."""
    from zmq.auth.thread import ThreadAuthenticator

    allowed_public_keys(keys.allow_keys_dir)  # a clear error now rather than a log line from the thread
    authenticator = ThreadAuthenticator(context, log=logging.getLogger("spikereveal.stream.auth"))
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(keys.allow_keys_dir))
    if admit_own_key:
        authenticator.certs.setdefault("*", {})[load_key_pair(keys.secret_key_file)[0]] = True
    return authenticator
