#!/usr/bin/env python3
"""ibind's OAuth 1.0a functions on the inputs of the Rust crypto benchmark.

Not part of CI. Needs `pip install ibind pycryptodome` (ibind 0.2.2 imports pycryptodome without
declaring it). Run it right
after `cargo bench -p broker-session-benches --bench crypto` on the same machine and
compare the medians:

    python3 benches/python/ibind_oauth.py

Inputs are the throwaway keys and vectors in tests/fixtures/ibkr-oauth1-vectors.json.
The fake broker's DH answer is the vectors' `dh_response_B_hex`; the live session
token is checked against the vectors' signature, so both sides compute the same thing.
"""

import json
import pathlib
import statistics
import time
from types import SimpleNamespace

from ibind.oauth import oauth1a as o

ROOT = pathlib.Path(__file__).resolve().parents[2]
V = json.loads((ROOT / "tests/fixtures/ibkr-oauth1-vectors.json").read_text())
CASE = V["dh"]["cases"][0]
PRIME = V["dh"]["prime_hex"]
ENC_PEM = V["rsa"]["encryption_private_key_pkcs1_pem"]
SIG_PEM = V["rsa"]["signature_private_key_pkcs1_pem"]
SECRET = V["rsa"]["access_token_secret_b64"]

CONFIG = SimpleNamespace(
    consumer_key="TESTCONS",
    access_token="0123456789abcdef0123",
    access_token_secret=SECRET,
    realm="limited_poa",
    encryption_key=ENC_PEM,
    encryption_key_fp=None,
    signature_key=SIG_PEM,
    signature_key_fp=None,
    dh_prime=PRIME,
    dh_generator="2",
)


def median_seconds(f, min_time=1.0, max_runs=2000):
    """Median wall time of f() over repeated single calls (at least 5, ~min_time)."""
    samples = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < 5 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), len(samples)


def lst_whole_step():
    # What ibind does for one live session token: prepare_oauth (DH random,
    # challenge, key read + decrypt of the access token secret), the RSA-SHA256
    # signed request headers (reads the signature key), then the token and its check.
    prepend, extra, dh_random = o.prepare_oauth(CONFIG)
    o.generate_oauth_headers(
        CONFIG,
        "POST",
        "https://api.ibkr.com/v1/api/oauth/live_session_token",
        extra_headers=extra,
        signature_method="RSA-SHA256",
        prepend=prepend,
    )
    # The vectors' B belongs to the vectors' a; use them so the check passes.
    lst = o.calculate_live_session_token(PRIME, CASE["dh_random_a_hex"], CASE["dh_response_B_hex"], CASE["prepend_hex"])
    assert o.validate_live_session_token(lst, CASE["live_session_token_signature_hex"], "TESTCONS")


def main():
    enc_key = o.read_private_key(private_key_content=ENC_PEM)
    sig_key = o.read_private_key(private_key_content=SIG_PEM)
    base = V["rsa"]["lst_base_string"]
    lst_b64 = V["hmac_request"]["live_session_token_b64"]
    benches = [
        ("ibkr_lst_whole_step", lst_whole_step),
        ("ibkr_part_parse_pem_key", lambda: o.read_private_key(private_key_content=ENC_PEM)),
        ("ibkr_part_rsa_decrypt", lambda: o.calculate_live_session_token_prepend(SECRET, enc_key)),
        ("ibkr_part_rsa_sign", lambda: o.generate_rsa_sha_256_signature(base, sig_key)),
        ("ibkr_part_dh_challenge", lambda: o.generate_dh_challenge(PRIME, CASE["dh_random_a_hex"], 2)),
        (
            "ibkr_part_dh_shared_secret+hmac_sha1",
            lambda: o.calculate_live_session_token(PRIME, CASE["dh_random_a_hex"], CASE["dh_response_B_hex"], CASE["prepend_hex"]),
        ),
        (
            "ibkr_part_hmac_sha1_check",
            lambda: o.validate_live_session_token(CASE["live_session_token_b64"], CASE["live_session_token_signature_hex"], "TESTCONS"),
        ),
        (
            "ibkr_authorize_hmac_sha256_with_query",
            lambda: o.generate_oauth_headers(
                CONFIG,
                "GET",
                "https://api.ibkr.com/v1/api/iserver/marketdata/snapshot",
                live_session_token=lst_b64,
                request_params={"conids": "265598,8314", "fields": "31,84,86"},
            ),
        ),
        (
            "ibkr_authorize_hmac_sha256_no_query",
            lambda: o.generate_oauth_headers(
                CONFIG, "GET", "https://api.ibkr.com/v1/api/portfolio/accounts", live_session_token=lst_b64
            ),
        ),
        ("ibkr_part_hmac_sha256", lambda: o.generate_hmac_sha_256_signature(V["hmac_request"]["base_string"], lst_b64)),
    ]
    print(f"ibind {getattr(__import__('ibind'), '__version__', '?')}, median of single calls")
    for name, f in benches:
        m, n = median_seconds(f)
        unit, scale = ("ms", 1e3) if m >= 1e-3 else ("µs", 1e6)
        print(f"  {name:<42} {m * scale:10.3f} {unit}   ({n} runs)")


if __name__ == "__main__":
    main()
