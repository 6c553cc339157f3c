"""Cybex-P compatible hybrid encryption of submissions, and careful handling of the private key.

A blob is ``enc_session_key | nonce(16) | tag(16) | ciphertext``: a random 32-byte session key
encrypted with RSA-OAEP (SHA-1, pycryptodome's default, as Cybex-P's ``encrypt_file``), the payload
encrypted with AES-256-EAX under that key. Errors name what failed, never key bytes or plaintext.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes

SESSION_KEY_BYTES = 32
NONCE_BYTES = 16
TAG_BYTES = 16
KEY_BITS = 2048

RandFunc = Callable[[int], bytes]


class DecryptError(ValueError):
    """A blob that cannot be decrypted with this key; the message says why, without secrets."""


class KeyFileError(ValueError):
    """A private key file that is missing, unreadable, not an RSA private key, or too open."""


def generate_key_pair(bits: int = KEY_BITS, randfunc: RandFunc | None = None) -> tuple[bytes, bytes]:
    """A new RSA key pair as (private PEM, public PEM); ``randfunc`` makes it deterministic (samples)."""
    key = RSA.generate(bits, randfunc=randfunc)
    return key.export_key("PEM"), key.publickey().export_key("PEM")


def import_public_key(pem: bytes) -> RSA.RsaKey:
    try:
        key = RSA.import_key(pem)
    except (ValueError, IndexError, TypeError):
        raise KeyFileError("not an RSA public key in PEM format") from None
    return key.publickey()


def encrypt(payload: bytes, public_key: RSA.RsaKey, randfunc: RandFunc | None = None) -> bytes:
    """Encrypt as Cybex-P's API module does; ``randfunc`` only for reproducible sample data."""
    rand = randfunc or get_random_bytes
    session_key = rand(SESSION_KEY_BYTES)
    enc_session_key = PKCS1_OAEP.new(public_key, randfunc=rand).encrypt(session_key)
    cipher = AES.new(session_key, AES.MODE_EAX, nonce=rand(NONCE_BYTES))
    ciphertext, tag = cipher.encrypt_and_digest(payload)
    return enc_session_key + cipher.nonce + tag + ciphertext


def decrypt(blob: bytes, private_key: RSA.RsaKey) -> bytes:
    """The plaintext of a blob, or DecryptError (wrong key, tampered or truncated blob)."""
    key_len = private_key.size_in_bytes()
    if len(blob) < key_len + NONCE_BYTES + TAG_BYTES:
        raise DecryptError(
            f"blob of {len(blob)} bytes is shorter than the {key_len + NONCE_BYTES + TAG_BYTES}-byte header "
            f"(RSA-{private_key.size_in_bits()} session key, nonce, tag)"
        )
    enc_session_key = blob[:key_len]
    nonce = blob[key_len : key_len + NONCE_BYTES]
    tag = blob[key_len + NONCE_BYTES : key_len + NONCE_BYTES + TAG_BYTES]
    ciphertext = blob[key_len + NONCE_BYTES + TAG_BYTES :]
    try:
        session_key = PKCS1_OAEP.new(private_key).decrypt(enc_session_key)
    except ValueError:
        raise DecryptError("session key does not decrypt with this private key (encrypted for another key?)") from None
    if len(session_key) != SESSION_KEY_BYTES:
        raise DecryptError(f"session key is {len(session_key)} bytes, expected {SESSION_KEY_BYTES}")
    try:
        return AES.new(session_key, AES.MODE_EAX, nonce=nonce).decrypt_and_verify(ciphertext, tag)
    except ValueError:
        raise DecryptError("payload authentication failed (tampered or truncated blob)") from None


def check_key_file_mode(path: Path) -> None:
    """Refuse a key file that group or others may read (or write), like ssh does."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"private key file {path} does not exist (make one with `ti-pipeline keygen`)") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"private key file {path} is not a regular file")
    if mode & 0o077:
        raise KeyFileError(
            f"private key file {path} has mode {stat.S_IMODE(mode):04o}: group or others may access it; "
            f"run `chmod 600 {path}`"
        )


def load_private_key(path: Path) -> RSA.RsaKey:
    """The RSA private key in ``path`` after the permission check; errors never quote the file."""
    path = Path(path)
    check_key_file_mode(path)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key file {path}: {exc.strerror}") from None
    try:
        key = RSA.import_key(pem)
    except (ValueError, IndexError, TypeError):
        raise KeyFileError(f"{path} is not an RSA private key in PEM format") from None
    if not key.has_private():
        raise KeyFileError(f"{path} holds a public key, not a private one")
    return key


def default_public_key_path(private: Path) -> Path:
    """Where the public half goes by default: beside the private key, 'private' replaced by 'public'."""
    name = private.name.replace("private", "public") if "private" in private.name else private.name + ".pub"
    return private.with_name(name)


def write_private_key(path: Path, pem: bytes) -> None:
    """Write a private key readable by its owner only, from the first byte on (no chmod window)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
