"""Deterministic RSA keys for the submission tests (generated once per process)."""

import functools
import random

from Crypto.PublicKey import RSA

from ti_pipeline.submissions import crypto


@functools.cache
def archive_key() -> RSA.RsaKey:
    return RSA.import_key(crypto.generate_key_pair(randfunc=random.Random("test-archive").randbytes)[0])


@functools.cache
def other_key() -> RSA.RsaKey:
    return RSA.import_key(crypto.generate_key_pair(randfunc=random.Random("test-other").randbytes)[0])


def private_pem(key: RSA.RsaKey) -> bytes:
    return key.export_key("PEM")


def secret_fragments(key: RSA.RsaKey) -> list[str]:
    """Texts that would betray the private key if they showed up anywhere: PEM body lines, d, p, q."""
    body = [line for line in private_pem(key).decode().splitlines() if not line.startswith("-----")]
    return [*body, str(key.d), f"{key.d:x}", str(key.p), str(key.q)]
