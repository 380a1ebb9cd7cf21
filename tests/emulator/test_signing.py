from __future__ import annotations

from airflow_provider_nanobanana.emulator.signing import UrlSigner, Verdict


def test_signed_paths_verify_until_they_expire() -> None:
    signer = UrlSigner(b"k" * 32)
    signature = signer.sign("/files/abc/0.png", 2000)
    assert signer.query("/files/abc/0.png", 2000) == f"expires=2000&sig={signature}"
    assert signer.verify("/files/abc/0.png", "2000", signature, now=1999) is Verdict.OK
    assert signer.verify("/files/abc/0.png", "2000", signature, now=2001) is Verdict.EXPIRED


def test_tampering_breaks_the_signature() -> None:
    signer = UrlSigner(b"k" * 32)
    signature = signer.sign("/files/abc/0.png", 2000)
    assert signer.verify("/files/abc/1.png", "2000", signature, now=0) is Verdict.BAD_SIGNATURE
    assert signer.verify("/files/abc/0.png", "3000", signature, now=0) is Verdict.BAD_SIGNATURE
    assert signer.verify("/files/abc/0.png", None, signature, now=0) is Verdict.BAD_SIGNATURE
    assert signer.verify("/files/abc/0.png", "x", signature, now=0) is Verdict.BAD_SIGNATURE
    assert UrlSigner(b"j" * 32).verify("/files/abc/0.png", "2000", signature, now=0) is Verdict.BAD_SIGNATURE
