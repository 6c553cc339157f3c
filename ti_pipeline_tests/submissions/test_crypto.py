import os
import stat

import pytest
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Random import get_random_bytes

from ti_pipeline.submissions import crypto
from ti_pipeline_tests.submissions.keyring import archive_key, other_key, private_pem, secret_fragments


def cybexp_encrypt(data: bytes, public_key) -> bytes:
    """Cybex-P API module's encrypt_file, as written there (the reference for compatibility)."""
    session_key = get_random_bytes(32)
    enc_session_key = PKCS1_OAEP.new(public_key).encrypt(session_key)
    cipher_aes = AES.new(session_key, AES.MODE_EAX)
    ciphertext, tag = cipher_aes.encrypt_and_digest(data)
    return b"".join([enc_session_key, cipher_aes.nonce, tag, ciphertext])


def cybexp_decrypt(blob: bytes, private_key) -> bytes:
    """Cybex-P archive's decrypt_file: split by key size, 16-byte nonce and tag."""
    n = private_key.size_in_bytes()
    enc_session_key, nonce, tag, ciphertext = blob[:n], blob[n : n + 16], blob[n + 16 : n + 32], blob[n + 32 :]
    session_key = PKCS1_OAEP.new(private_key).decrypt(enc_session_key)
    return AES.new(session_key, AES.MODE_EAX, nonce).decrypt_and_verify(ciphertext, tag)


def test_round_trip_and_layout():
    payload = b"type,value\nmd5,d41d8cd98f00b204e9800998ecf8427e\n"
    blob = crypto.encrypt(payload, archive_key().publickey())
    assert len(blob) == 256 + 16 + 16 + len(payload)
    assert crypto.decrypt(blob, archive_key()) == payload


def test_compatible_with_cybexp_both_ways():
    payload = "{\"Event\": {\"info\": \"ünïcode\"}}".encode()
    assert crypto.decrypt(cybexp_encrypt(payload, archive_key().publickey()), archive_key()) == payload
    assert cybexp_decrypt(crypto.encrypt(payload, archive_key().publickey()), archive_key()) == payload


def test_wrong_key_is_named():
    blob = crypto.encrypt(b"payload", other_key().publickey())
    with pytest.raises(crypto.DecryptError, match="encrypted for another key"):
        crypto.decrypt(blob, archive_key())


@pytest.mark.parametrize("offset", [256 + 3, 256 + 16 + 3, -1], ids=["nonce", "tag", "ciphertext"])
def test_any_tampered_byte_after_the_session_key_fails_authentication(offset: int):
    blob = bytearray(crypto.encrypt(b"some payload", archive_key().publickey()))
    blob[offset] ^= 0x80
    with pytest.raises(crypto.DecryptError, match="authentication failed"):
        crypto.decrypt(bytes(blob), archive_key())


def test_truncated_blob():
    blob = crypto.encrypt(b"x", archive_key().publickey())
    with pytest.raises(crypto.DecryptError, match="shorter than the 288-byte header"):
        crypto.decrypt(blob[:200], archive_key())


def test_private_key_written_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "keys" / "private.pem"
        crypto.write_private_key(path, private_pem(archive_key()))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.load_private_key(path) == archive_key()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_readable_by_group_or_others_is_refused(tmp_path, mode: int):
    path = tmp_path / "private.pem"
    crypto.write_private_key(path, private_pem(archive_key()))
    path.chmod(mode)
    with pytest.raises(crypto.KeyFileError) as info:
        crypto.load_private_key(path)
    message = str(info.value)
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message
    assert not any(fragment in message for fragment in secret_fragments(archive_key()))


def test_key_file_errors_do_not_quote_the_file(tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(crypto.KeyFileError, match="does not exist .*ti-pipeline keygen"):
        crypto.load_private_key(missing)
    public = tmp_path / "public.pem"
    crypto.write_private_key(public, archive_key().publickey().export_key())
    with pytest.raises(crypto.KeyFileError, match="holds a public key"):
        crypto.load_private_key(public)
    garbage = tmp_path / "garbage.pem"
    pem = private_pem(archive_key())
    crypto.write_private_key(garbage, pem[: len(pem) // 2])
    with pytest.raises(crypto.KeyFileError) as info:
        crypto.load_private_key(garbage)
    assert str(info.value) == f"{garbage} is not an RSA private key in PEM format"


def test_default_public_key_path(tmp_path):
    assert crypto.default_public_key_path(tmp_path / "submissions_private.pem") == tmp_path / "submissions_public.pem"
    assert crypto.default_public_key_path(tmp_path / "archive.pem") == tmp_path / "archive.pem.pub"
