"""Real third-party clients against sim-server: PyPI ibind (gateway and OAuth 1.0a)
and PyPI trading-ig (IG v2 and v3), unchanged except for base URL and credentials.

Started by tests/interop/run, which passes INTEROP_WORK (start-up output, CA files
and request logs of two sim-servers: `gateway` and `oauth`) and INTEROP_ROOT.
Each test asserts the client's own result and what the fake logged. The last line
of output is `N passed, M failed`.
"""

import json
import os
import re
import sys
import time
import traceback

WORK = os.environ["INTEROP_WORK"]
ROOT = os.environ["INTEROP_ROOT"]


class Server:
    """One running sim-server, as its start-up output describes it."""

    def __init__(self, name):
        self.name = name
        with open(os.path.join(WORK, f"{name}.out")) as f:
            self.out = f.read()
        self.ca = os.path.join(WORK, f"{name}-ca.pem")
        self.log_path = os.path.join(WORK, f"{name}-requests.jsonl")
        https = re.findall(r"^\s+(https://127\.0\.0\.1:\d+)/gateway/deal$", self.out, re.M)
        self.ig_base = https[0] + "/gateway/deal"
        self.ibkr_base = re.findall(r"^\s+(https://127\.0\.0\.1:\d+/v1/api/)$", self.out, re.M)[0]

        def field(name):
            return re.search(rf"^\s+{name}:\s+(\S+)$", self.out, re.M).group(1)

        self.api_key = field("api key")
        self.identifier = field("identifier")
        self.password = field("password")
        self.secret = field("access token secret") if "access token secret" in self.out else None

    def mark(self):
        """Where the request log ends now."""
        return os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0

    def log(self, since):
        """The requests logged after `since` (a mark)."""
        with open(self.log_path) as f:
            f.seek(since)
            return [json.loads(line) for line in f if line.strip()]


GATEWAY = Server("gateway")
OAUTH = Server("oauth")
# trading-ig and ibind's OAuth mode verify TLS with requests' default store, which
# REQUESTS_CA_BUNDLE replaces (both servers' CAs in one bundle).
BUNDLE = os.path.join(WORK, "bundle.pem")
with open(BUNDLE, "w") as out:
    for s in (GATEWAY, OAUTH):
        with open(s.ca) as f:
            out.write(f.read())
os.environ["REQUESTS_CA_BUNDLE"] = BUNDLE

TESTS = []
MATRIX = []


def test(client, feature):
    def register(fn):
        TESTS.append((client, feature, fn))
        return fn

    return register


def only(entries, method, path_prefix):
    return [e for e in entries if e["method"] == method and e["path"].startswith(path_prefix)]


def untunnelled(entries):
    """Entries without IG's `_method` tunnel header (a POST that is not a DELETE)."""
    return [e for e in entries if "_method" not in e["headers"]]


def one(entries, method, path_prefix):
    found = only(entries, method, path_prefix)
    assert len(found) == 1, f"expected one {method} {path_prefix}, log: {[(e['method'], e['path'], e['status']) for e in entries]}"
    return found[0]


# ---------------------------------------------------------------------------
# trading-ig 0.0.25

from trading_ig.rest import IGService  # noqa: E402


def ig_service(server, version_for_acc=None):
    ig = IGService(
        server.identifier,
        server.password,
        server.api_key,
        acc_type="demo",
        acc_number=version_for_acc,
        return_dataframe=False,
        return_munch=False,
    )
    # The only change to the client: its base URL.
    ig.BASE_URL = server.ig_base
    ig.crud_session.BASE_URL = server.ig_base
    return ig


@test("trading-ig", "v2 login, read without and with session tokens, logout")
def trading_ig_v2():
    s = GATEWAY
    m = s.mark()
    ig = ig_service(s)
    data = ig.create_session(version="2")
    assert data["currentAccountId"] == "ACC-DEFAULT", data
    cst = ig.session.headers["CST"]
    read = ig.read_session()
    assert read["accountId"] == "ACC-DEFAULT", read
    read = ig.read_session(fetch_session_tokens="true")
    assert read["accountId"] == "ACC-DEFAULT", read
    assert ig.session.headers["CST"] == cst
    ig.logout()
    log = s.log(m)
    login = one(untunnelled(log), "POST", "/gateway/deal/session")
    assert login["status"] == 200 and login["headers"]["version"] == "2", login
    reads = only(log, "GET", "/gateway/deal/session")
    assert [e["path"] for e in reads] == [
        "/gateway/deal/session?fetchSessionTokens=false",
        "/gateway/deal/session?fetchSessionTokens=true",
    ], reads
    assert all(e["status"] == 200 for e in reads), reads
    # Logout is IG's method tunnel: POST with `_method: DELETE`.
    logout = [e for e in only(log, "POST", "/gateway/deal/session") if e["headers"].get("_method") == "DELETE"]
    assert len(logout) == 1 and logout[0]["status"] == 204, log
    assert logout[0]["headers"]["cst"] == "<redacted>", "credentials never reach the log"
    # The session really ended: the old tokens are refused.
    import requests

    r = requests.get(
        s.ig_base + "/session",
        headers={"X-IG-API-KEY": s.api_key, "CST": cst, "X-SECURITY-TOKEN": "x", "Version": "1"},
    )
    assert r.status_code == 401 and r.json()["errorCode"] == "error.security.client-token-invalid", r.text


@test("trading-ig", "v2 switch account")
def trading_ig_v2_switch():
    s = GATEWAY
    ig = ig_service(s)
    ig.create_session(version="2")
    m = s.mark()
    data = ig.switch_account("ACC-OTHER", False)
    assert data["dealingEnabled"] is True, data
    assert ig.read_session()["accountId"] == "ACC-OTHER"
    # Switching to the current account: IG's 412.
    try:
        ig.switch_account("ACC-OTHER", False)
        raise AssertionError("a switch to the current account must be refused")
    except Exception as e:
        assert "error.switch.accountId-must-be-different" in str(e), e
    ig.logout()
    log = s.log(m)
    puts = only(log, "PUT", "/gateway/deal/session")
    assert [e["status"] for e in puts] == [200, 412], puts


@test("trading-ig", "v2 encrypted-password login")
def trading_ig_v2_encrypted():
    s = GATEWAY
    m = s.mark()
    ig = ig_service(s)
    data = ig.create_session(version="2", encryption=True)
    assert data["currentAccountId"] == "ACC-DEFAULT", data
    assert data["encrypted"] is True, data
    ig.logout()
    log = s.log(m)
    key = one(log, "GET", "/gateway/deal/session/encryptionKey")
    # trading-ig fetches the key on a fresh session: no Version header (IG: 1).
    assert "version" not in key["headers"] and key["status"] == 200, key
    login = only(untunnelled(log), "POST", "/gateway/deal/session")
    assert len(login) == 1 and login[0]["status"] == 200, login


@test("trading-ig", "v3 login, read without and with session tokens, logout")
def trading_ig_v3():
    s = GATEWAY
    m = s.mark()
    ig = ig_service(s, "ACC-DEFAULT")
    data = ig.create_session(version="3")
    assert data["accountId"] == "ACC-DEFAULT", data
    assert ig.session.headers["Authorization"].startswith("Bearer "), "Bearer token in use"
    assert ig.read_session()["accountId"] == "ACC-DEFAULT"
    ig.read_session(fetch_session_tokens="true")
    assert "CST" in ig.session.headers and "X-SECURITY-TOKEN" in ig.session.headers
    ig.logout()
    log = s.log(m)
    login = one(untunnelled(log), "POST", "/gateway/deal/session")
    assert login["headers"]["version"] == "3" and login["status"] == 200, login
    reads = only(log, "GET", "/gateway/deal/session")
    assert [e["status"] for e in reads] == [200, 200], reads
    assert reads[0]["headers"]["authorization"] == "Bearer <redacted>", reads[0]
    assert reads[0]["headers"]["ig-account-id"] == "ACC-DEFAULT", reads[0]
    logout = [e for e in log if e["headers"].get("_method") == "DELETE"]
    assert len(logout) == 1 and logout[0]["status"] == 204, log


@test("trading-ig", "v3 refresh (explicit, and on expiry)")
def trading_ig_v3_refresh():
    s = OAUTH  # this server's IG access tokens live 2 s
    m = s.mark()
    ig = ig_service(s, "ACC-DEFAULT")
    ig.create_session(version="3")
    first = ig.session.headers["Authorization"]
    assert ig.refresh_session() == 200
    second = ig.session.headers["Authorization"]
    assert second != first
    time.sleep(2.5)
    # trading-ig's `_check_session` sees the token expired and refreshes first.
    assert ig.read_session()["accountId"] == "ACC-DEFAULT"
    assert ig.session.headers["Authorization"] != second
    ig.logout()
    log = s.log(m)
    refreshes = only(log, "POST", "/gateway/deal/session/refresh-token")
    assert [e["status"] for e in refreshes] == [200, 200], refreshes
    assert all(e["headers"]["version"] == "1" for e in refreshes), refreshes
    assert [e["status"] for e in only(log, "GET", "/gateway/deal/session")] == [200]


@test("trading-ig", "v3 switch account (CST/XST fetched first)")
def trading_ig_v3_switch():
    s = GATEWAY
    ig = ig_service(s, "ACC-DEFAULT")
    ig.create_session(version="3")
    ig.read_session(fetch_session_tokens="true")
    m = s.mark()
    data = ig.switch_account("ACC-OTHER", False)
    assert data["dealingEnabled"] is True, data
    ig.logout()
    log = s.log(m)
    put = one(log, "PUT", "/gateway/deal/session")
    # Bearer, IG-ACCOUNT-ID, CST and XST together: the pair decides.
    for h in ("authorization", "ig-account-id", "cst", "x-security-token"):
        assert h in put["headers"], put
    assert put["status"] == 200, put


@test("trading-ig", "v3 switch account with the Bearer token only (refused: IG switches CST/XST sessions)")
def trading_ig_v3_switch_bearer_only():
    s = GATEWAY
    ig = ig_service(s, "ACC-DEFAULT")
    ig.create_session(version="3")
    m = s.mark()
    try:
        ig.switch_account("ACC-OTHER", False)
        raise AssertionError("a Bearer-only switch must be refused")
    except AssertionError:
        raise
    except Exception as e:
        assert "error.security.client-token-missing" in str(e), e
    ig.logout()
    put = one(s.log(m), "PUT", "/gateway/deal/session")
    assert put["status"] == 401 and put["error"] == "error.security.client-token-missing", put


@test("trading-ig", "v3 encrypted-password login (refused, as reported for IG)")
def trading_ig_v3_encrypted():
    s = GATEWAY
    m = s.mark()
    ig = ig_service(s, "ACC-DEFAULT")
    try:
        ig.create_session(version="3", encryption=True)
        raise AssertionError("v3 with an encrypted password must be refused")
    except AssertionError:
        raise
    except Exception as e:
        assert "error.security.invalid-details" in str(e), e
    login = one(s.log(m), "POST", "/gateway/deal/session")
    assert login["status"] == 401 and login["headers"]["version"] == "3", login


# ---------------------------------------------------------------------------
# ibind 0.2.2

from ibind import IbkrClient  # noqa: E402


@test("ibind", "gateway: status, init, tickle, validate, reauthenticate, accounts, logout")
def ibind_gateway():
    s = GATEWAY
    m = s.mark()
    c = IbkrClient(url=s.ibkr_base, cacert=s.ca, auto_register_shutdown=False, max_retries=0)
    status = c.authentication_status().data
    assert status["connected"] is True, status
    init = c.initialize_brokerage_session().data
    assert init["authenticated"] is True, init
    assert c.check_health() is True
    tickle = c.tickle().data
    assert tickle["iserver"]["authStatus"]["authenticated"] is True, tickle
    validate = c.validate().data
    assert validate["RESULT"] is True, validate
    assert c.reauthenticate().data == {"message": "triggered"}
    accounts = c.receive_brokerage_accounts().data
    assert accounts["accounts"] == ["DU1234567"], accounts
    assert c.logout().data == {"status": True}
    assert c.check_health() is False, "no session after logout"
    c.close()
    log = s.log(m)
    seen = [(e["method"], e["path"].replace("/v1/api", ""), e["status"]) for e in log]
    assert seen == [
        ("POST", "/iserver/auth/status", 200),
        ("POST", "/iserver/auth/ssodh/init", 200),
        ("POST", "/tickle", 200),
        ("POST", "/tickle", 200),
        ("GET", "/sso/validate", 200),
        ("POST", "/iserver/reauthenticate", 200),
        ("GET", "/iserver/accounts", 200),
        ("POST", "/logout", 200),
        ("POST", "/tickle", 401),
    ], seen
    assert all("authorization" not in e["headers"] for e in log)


def oauth_config():
    from ibind.oauth.oauth1a import OAuth1aConfig

    with open(os.path.join(ROOT, "tests/fixtures/ibkr-oauth1-vectors.json")) as f:
        v = json.load(f)
    return OAuth1aConfig(
        oauth_rest_url=OAUTH.ibkr_base,
        access_token="0123456789abcdef0123",
        access_token_secret=OAUTH.secret,
        consumer_key="TESTCONS",
        dh_prime=v["dh"]["prime_hex"],
        encryption_key=v["rsa"]["encryption_private_key_pkcs8_pem"],
        signature_key=v["rsa"]["signature_private_key_pkcs1_pem"],
        realm="test_realm",
        init_oauth=True,
        init_brokerage_session=True,
        maintain_oauth=False,
        shutdown_oauth=True,
    )


@test("ibind", "OAuth 1.0a: live session token, signed calls without and with a query string, logout")
def ibind_oauth():
    s = OAUTH
    m = s.mark()
    c = IbkrClient(use_oauth=True, oauth_config=oauth_config(), auto_register_shutdown=False, max_retries=0)
    # The constructor obtained and validated the live session token, then ssodh/init.
    assert c.live_session_token and c.live_session_token_expires_ms > time.time() * 1000
    assert c.check_auth_status() is True
    assert c.receive_brokerage_accounts().data["accounts"] == ["DU1234567"]
    orders = c.live_orders(filters=["filled"], force=True).data
    assert orders == {"orders": [], "snapshot": True}, orders
    c.close()  # shutdown_oauth: POST /logout
    log = s.log(m)
    seen = [(e["method"], e["path"].replace("/v1/api", ""), e["status"]) for e in log]
    assert seen == [
        ("POST", "/oauth/live_session_token", 200),
        ("POST", "/iserver/auth/ssodh/init", 200),
        ("POST", "/iserver/auth/status", 200),
        ("GET", "/iserver/accounts", 200),
        ("GET", "/iserver/account/orders?filters=filled&force=True", 200),
        ("POST", "/logout", 200),
    ], seen
    for e in log:
        # ibind always names api.ibkr.com; it signed for the loopback URL.
        assert e["headers"]["host"] == "api.ibkr.com", e
        assert e["headers"]["user-agent"] == "ibind", e
        assert e["headers"]["authorization"].startswith('OAuth realm="test_realm", '), e
        assert "oauth_signature" in e["headers"]["authorization"], e
        assert "=" not in e["headers"]["authorization"].split(", ", 1)[1], "values are redacted"


@test("ibind", "OAuth 1.0a: validate answers 401 (IBKR: /sso/validate is for the gateway and OAuth 2.0)")
def ibind_oauth_validate():
    from ibind.support.errors import ExternalBrokerError

    s = OAUTH
    c = IbkrClient(use_oauth=True, oauth_config=oauth_config(), auto_register_shutdown=False, max_retries=0)
    m = s.mark()
    try:
        c.validate()
        raise AssertionError("validate must be refused under OAuth 1.0a")
    except ExternalBrokerError as e:
        assert e.status_code == 401, e
    c.close()
    log = s.log(m)
    assert [(e["path"].replace("/v1/api", ""), e["status"]) for e in log] == [
        ("/sso/validate", 401),
        ("/logout", 200),
    ], log


def main():
    passed = failed = 0
    for client, feature, fn in TESTS:
        started = time.monotonic()
        try:
            fn()
            passed += 1
            result = "works"
        except Exception:
            failed += 1
            result = "FAILS"
            traceback.print_exc()
        took = time.monotonic() - started
        print(f"{result:5}  {client:10}  {feature}  ({took:.1f} s)", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
