"""URL signing micro-benchmark: microseconds per token, one process, one core.

    .venv/bin/python bench/bench_signing.py [--seconds 0.3]

Measured: our HMAC ``pdt`` token (per-URL sign with a prepared minter, the full ``sign()`` call,
``verify()`` per-URL / prefix / IP-bound), CloudFront canned-policy URLs (RSA-2048 SHA-1 and
SHA-256, ECDSA P-256; each with a fresh policy, i.e. a cache miss, and a repeated one, the cache
hit a burst of manifests within one expiry window sees), Akamai EdgeAuth URL and ACL tokens, S3
SigV4 presigned GETs, and the signing policy mapping every URI of a 150-segment HLS media
playlist through the real rewriter (prefix and per-URL modes; no cache).

Figures are process CPU time per operation: the best and the median of seven timing rounds of
``--seconds`` each.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from extproc import manifest  # noqa: E402
from extproc.config import PolicyConfig, TokenMode  # noqa: E402
from extproc.manifest import ManifestKind  # noqa: E402
from extproc.policy import SigningPolicy  # noqa: E402
from extproc.signers import AkamaiEdgeAuth, CloudFrontSigner, S3Presigner  # noqa: E402
from playback_drm import urlsign  # noqa: E402

NOW = 1_700_000_000
PATH = "/media/demo/hls/720p/seg_00042.ts"
CF_URL = "https://d111111abcdef8.cloudfront.net/media/demo/hls/720p/seg_{}.ts"


def measure(fn: Callable[[], object], seconds: float, rounds: int = 7) -> tuple[float, float]:
    """(best, median) CPU microseconds per call over ``rounds`` rounds of ~``seconds`` each.

    Process CPU time, not wall time: other processes on a shared machine inflate wall time.
    """
    fn()
    calls = 1
    while True:  # calibrate the batch size
        start = time.process_time()
        for _ in range(calls):
            fn()
        elapsed = time.process_time() - start
        if elapsed >= seconds / 4:
            break
        calls *= 2
    per_round = max(1, int(calls * seconds / max(elapsed, 1e-9)))
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(per_round):
            fn()
        samples.append((time.process_time() - start) / per_round * 1e6)
    return min(samples), statistics.median(samples)


def media_playlist(segments: int = 150) -> bytes:
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:4",
        "#EXT-X-MEDIA-SEQUENCE:0",
        '#EXT-X-MAP:URI="init.mp4"',
        '#EXT-X-KEY:METHOD=AES-128,URI="/drm/key/demo/00112233445566778899aabbccddeeff"',
    ]
    for i in range(segments):
        lines += ["#EXTINF:4.000,", f"seg_{i:05d}.ts"]
    lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="seconds per timing round")
    args = parser.parse_args()
    seconds: float = args.seconds

    secret = bytes(range(32))
    keys = f"k1:{base64.b64encode(secret).decode()}"
    ring = urlsign.KeyRing.from_spec(keys)
    exp = NOW + 300
    minter = urlsign.minter(ring, expires_at=exp)
    per_url_query = "pdt=" + urlsign.sign(ring, PATH, expires_at=exp)
    prefix_query = "pdt=" + urlsign.sign(ring, "", expires_at=exp, scope="/media/demo/")
    ip_query = "pdt=" + urlsign.sign(ring, PATH, expires_at=exp, client_ip="203.0.113.9")

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cf_sha1 = CloudFrontSigner("K2JCJMDEHXQW5F", rsa_key, cache_entries=64)
    cf_sha256 = CloudFrontSigner("K2JCJMDEHXQW5F", rsa_key, hash_algorithm="SHA256")
    cf_ecdsa = CloudFrontSigner("K2JCJMDEHXQW5F", ec.generate_private_key(ec.SECP256R1()))
    counter = itertools.count()

    akamai = AkamaiEdgeAuth("52a152a152a152a152a152a152a1")
    s3 = S3Presigner(
        "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "eu-west-1"
    )
    s3_url = "https://bucket.s3.eu-west-1.amazonaws.com/media/demo/hls/720p/seg_00042.ts"

    body = media_playlist()
    policies = {
        mode: SigningPolicy(
            PolicyConfig.from_env(
                {
                    "ORIGIN_URL": "http://127.0.0.1:9104/",
                    "URL_SIGNING_KEYS": keys,
                    "URL_TOKEN_MODE": mode.value,
                }
            )
        )
        for mode in TokenMode
    }

    def rewrite(mode: TokenMode) -> Callable[[], object]:
        policy = policies[mode]

        def run() -> object:
            mapper = policy.mapper(
                video_id="demo",
                document_url="hls/720p/playlist.m3u8",
                public_path="/media/demo/hls/720p/playlist.m3u8",
                now=NOW,
            )
            return manifest.rewrite(ManifestKind.HLS, body, mapper)

        return run

    def identity_rewrite() -> object:
        return manifest.rewrite(ManifestKind.HLS, body, lambda ref: None)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("pdt sign, per-URL (prepared minter)", lambda: minter.token(PATH)),
        ("pdt sign() call, per-URL", lambda: urlsign.sign(ring, PATH, expires_at=exp)),
        (
            "pdt sign() call, prefix",
            lambda: urlsign.sign(ring, "", expires_at=exp, scope="/media/demo/"),
        ),
        (
            "pdt verify, per-URL",
            lambda: urlsign.verify(ring, PATH, per_url_query, now=NOW, client_ip=None),
        ),
        (
            "pdt verify, prefix",
            lambda: urlsign.verify(ring, PATH, prefix_query, now=NOW, client_ip=None),
        ),
        (
            "pdt verify, IP-bound",
            lambda: urlsign.verify(ring, PATH, ip_query, now=NOW, client_ip="203.0.113.9"),
        ),
        (
            "CloudFront canned, RSA-2048 SHA-1, cache miss",
            lambda: cf_sha1.signed_url(CF_URL.format(next(counter)), expires_at=exp),
        ),
        (
            "CloudFront canned, RSA-2048 SHA-256, cache miss",
            lambda: cf_sha256.signed_url(CF_URL.format(next(counter)), expires_at=exp),
        ),
        (
            "CloudFront canned, ECDSA P-256, cache miss",
            lambda: cf_ecdsa.signed_url(CF_URL.format(next(counter)), expires_at=exp),
        ),
        (
            "CloudFront canned, cache hit (same window)",
            lambda: cf_sha1.signed_url(CF_URL.format(1), expires_at=exp),
        ),
        ("Akamai EdgeAuth URL token", lambda: akamai.url_token(PATH, end_time=exp)),
        ("Akamai EdgeAuth ACL token", lambda: akamai.acl_token("/media/demo/*", end_time=exp)),
        ("S3 SigV4 presigned GET", lambda: s3.presign(s3_url, signed_at=NOW, expires_in=300)),
        ("HLS 150 segments: rewrite, no mapper", identity_rewrite),
        ("HLS 150 segments: rewrite + sign, prefix", rewrite(TokenMode.PREFIX)),
        ("HLS 150 segments: rewrite + sign, per-URL", rewrite(TokenMode.URL)),
    ]
    width = max(len(name) for name, _ in cases)
    print(f"{'operation (CPU us per op)':<{width}}  {'best':>9}  {'median':>9}")
    print("-" * (width + 22))
    for name, fn in cases:
        best, median = measure(fn, seconds)
        print(f"{name:<{width}}  {best:>9.2f}  {median:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
