//! OAuth 1.0a sessions against the fake's real server side, in virtual time.

use std::time::Duration;

use broker_session::ibkr::{
    IbkrConfig, IbkrIntent, IbkrOutcome, IbkrSession, IbkrState, OAuthConfig, QuerySigning,
};
use broker_session::secret::PrivateKeyPem;
use broker_session::{AuthorizeError, CryptoError, Error, Machine, Observation, UsageError};
use broker_session_testkit::ibkr::{FakeIbkr, Fault, QueryAcceptance};
use broker_session_testkit::sim::{FakeBroker, Reply, Sim, VirtualClock};

fn sim_with(
    pkcs8: bool,
    tweak: impl FnOnce(&mut IbkrConfig, &mut FakeIbkr),
) -> Sim<IbkrSession, FakeIbkr> {
    let (mut fake, oauth) = FakeIbkr::oauth(pkcs8);
    let mut config = FakeIbkr::oauth_config(oauth);
    tweak(&mut config, &mut fake);
    let clock = VirtualClock::new();
    let session =
        IbkrSession::new(config, broker_session::RngSeed::from_u64(7), clock.now()).unwrap();
    Sim::with_clock(session, fake, clock)
}

fn sim() -> Sim<IbkrSession, FakeIbkr> {
    sim_with(false, |_, _| {})
}

const ACCOUNTS: &str = "https://api.ibkr.com/v1/api/iserver/accounts";

fn get(uri: &str) -> http::Request<Vec<u8>> {
    http::Request::get(uri).body(Vec::new()).unwrap()
}

#[test]
fn connect_obtains_a_live_session_token_and_initialises() {
    for pkcs8 in [false, true] {
        let mut sim = sim_with(pkcs8, |_, _| {});
        let out = sim.run(IbkrIntent::Connect).unwrap();
        assert!(matches!(out, IbkrOutcome::Connected(_)), "{out:?}");
        assert_eq!(sim.machine.state(), IbkrState::Ready);
        let paths: Vec<_> = sim
            .broker
            .requests
            .iter()
            .map(|r| r.path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "/oauth/live_session_token",
                "/iserver/auth/status",
                "/iserver/auth/ssodh/init",
                "/iserver/accounts"
            ]
        );
        assert!(sim.broker.requests.iter().all(|r| r.authorized));
        let server = sim.broker.oauth_server().unwrap();
        assert_eq!(server.tokens_issued, 1);
        assert_eq!(server.bad_signatures, 0);
        assert_eq!(sim.machine.generation(), 1);

        // The user's requests are signed too, and the fake verifies them.
        let out = sim.app_request(&get(ACCOUNTS)).unwrap();
        assert_eq!(out.response.unwrap().status(), 200);
        assert_eq!(out.sends, 1);
    }
}

#[test]
fn query_parameters_follow_the_signing_policy() {
    let uri = "https://api.ibkr.com/v1/api/iserver/accounts?conid=265598&period=1d&bar=a%2Fb+c";
    for (client, server_accepts, ok) in [
        (QuerySigning::Include, QueryAcceptance::Either, true),
        (QuerySigning::Omit, QueryAcceptance::Either, true),
        (QuerySigning::Include, QueryAcceptance::Included, true),
        (QuerySigning::Omit, QueryAcceptance::Omitted, true),
        (QuerySigning::Include, QueryAcceptance::Omitted, false),
        (QuerySigning::Omit, QueryAcceptance::Included, false),
    ] {
        let mut sim = sim_with(false, |c, f| {
            if let broker_session::ibkr::IbkrAuth::OAuth(o) = &mut c.auth {
                o.query_signing = client;
            }
            f.oauth_server().unwrap().query_signing = server_accepts;
        });
        sim.run(IbkrIntent::Connect).unwrap();
        let out = sim.app_request(&get(uri)).unwrap();
        if ok {
            assert_eq!(out.response.unwrap().status(), 200);
        } else {
            // Refused, one recovery (new token), refused again: lost, not a loop.
            assert_eq!(out.sends, 2);
            assert!(
                matches!(
                    out.observation,
                    Some(Observation::Lost(Error::Unauthorized(_)))
                ),
                "{:?}",
                out.observation
            );
            assert_eq!(sim.broker.oauth_server().unwrap().tokens_issued, 2);
        }
    }
}

#[test]
fn a_tampered_signature_is_refused_and_recovered_once() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    let mut req = get(ACCOUNTS);
    let now = sim.now();
    let stamp = sim.machine.authorize(&mut req, now).unwrap();
    let header = req.headers()["authorization"].to_str().unwrap().to_owned();
    let tampered = header.replacen("oauth_signature=\"", "oauth_signature=\"AAAA", 1);
    req.headers_mut()
        .insert("authorization", tampered.parse().unwrap());
    let Reply::Response(resp) = sim.broker.handle(&req, now) else {
        panic!()
    };
    assert_eq!(resp.status(), 401);
    assert_eq!(sim.broker.oauth_server().unwrap().bad_signatures, 1);
    let obs = sim.machine.observe(&resp, stamp, now);
    let Observation::Recover { op } = obs else {
        panic!("{obs:?}")
    };
    let out = sim.wait_for(op).unwrap();
    assert!(matches!(out, IbkrOutcome::Connected(_)));
    assert_eq!(sim.machine.generation(), 2);
    // A second 401 on the old stamp is a replay, not another recovery.
    assert_eq!(
        sim.machine.observe(&resp, stamp, sim.now()),
        Observation::Replay
    );
    let out = sim.app_request(&get(ACCOUNTS)).unwrap();
    assert_eq!(out.response.unwrap().status(), 200);
}

#[test]
fn a_day_of_keepalive_with_token_renewals_and_a_daily_reset() {
    let mut sim = sim_with(false, |_, f| {
        f.oauth_server().unwrap().lst_lifetime = Duration::from_secs(8 * 3600);
        // The clock starts at 12:00 UTC; the reset comes 17 hours later.
        f.daily_reset = Some(Duration::from_secs(5 * 3600));
    });
    sim.run(IbkrIntent::Connect).unwrap();
    sim.advance(Duration::from_secs(24 * 3600));
    let server = sim.broker.oauth_server().unwrap();
    let issued = server.tokens_issued;
    let bad = server.bad_signatures;
    // 1 at login, proactive renewals near 8 h and 16 h, 1 after the reset, 1 near 25 h is
    // outside the window.
    assert!((4..=5).contains(&issued), "{issued}");
    assert_eq!(bad, 0);
    assert_eq!(sim.broker.resets, 1);
    assert_eq!(sim.machine.state(), IbkrState::Ready);
    let tickles = sim.broker.requests_to("/tickle").count();
    // One every 54 to 60 s (the interval shortened by up to the default 6 s spread):
    // 1,440 to 1,600 a day.
    assert!((1430..=1610).contains(&tickles), "{tickles}");
    assert!(sim.broker.min_gap("/tickle").unwrap() >= Duration::from_secs(1));
    let max_gap = sim
        .broker
        .requests_to("/tickle")
        .map(|r| r.at)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    assert!(max_gap < Duration::from_secs(90), "{max_gap:?}");
    // Renewals happened before expiry: no signed request was refused except the
    // one the reset invalidated.
    let refused = sim.completions().filter(|(_, r)| r.is_err()).count();
    assert_eq!(refused, 0);
    // An application request still works after all that.
    let out = sim.app_request(&get(ACCOUNTS)).unwrap();
    assert_eq!(out.response.unwrap().status(), 200);
}

#[test]
fn rejected_credentials_close_the_session_without_retry() {
    let mut sim = sim_with(false, |_, f| {
        f.oauth_server().unwrap().reject_consumer = true
    });
    let err = sim.run(IbkrIntent::Connect).unwrap_err();
    assert!(
        matches!(err, Error::CredentialsRejected(ref e) if e.status == 401),
        "{err}"
    );
    assert!(err.to_string().contains("not retried"));
    assert_eq!(sim.machine.state(), IbkrState::Closed);
    assert_eq!(sim.broker.requests.len(), 1);
    sim.advance(Duration::from_secs(3600));
    assert_eq!(sim.broker.requests.len(), 1);
    assert_eq!(
        sim.submit(IbkrIntent::Connect),
        Err(UsageError::SessionClosed)
    );
    let mut req = get(ACCOUNTS);
    assert!(matches!(
        sim.machine.authorize(&mut req, sim.now()),
        Err(AuthorizeError::Lost(_))
    ));
}

#[test]
fn the_wrong_encryption_key_is_caught_by_the_token_signature() {
    let (fake, oauth) = FakeIbkr::oauth(false);
    let mut wrong = oauth.clone();
    // Same size key, wrong one: rsa 0.10 decrypts to a synthetic prepend.
    wrong.encryption_key = PrivateKeyPem::new(oauth.signature_key.expose_secret());
    let clock = VirtualClock::new();
    let session = match IbkrSession::new(
        FakeIbkr::oauth_config(wrong),
        broker_session::RngSeed::from_u64(1),
        clock.now(),
    ) {
        Ok(s) => s,
        // A decryption error is also an acceptable early refusal.
        Err(e) => return assert!(matches!(e, Error::Crypto(_)), "{e}"),
    };
    let mut sim = Sim::with_clock(session, fake, clock);
    // The prepend is part of the signed base string, so the server refuses the
    // signature: credentials rejected, never retried.
    let err = sim.run(IbkrIntent::Connect).unwrap_err();
    assert!(matches!(err, Error::CredentialsRejected(_)), "{err}");
    assert_eq!(sim.machine.state(), IbkrState::Closed);
    assert_eq!(sim.broker.requests.len(), 1);
}

#[test]
fn a_token_whose_signature_does_not_match_closes_the_session() {
    let v: serde_json::Value =
        serde_json::from_str(broker_session_testkit::ibkr::VECTORS_JSON).unwrap();
    let b = v["dh"]["cases"][0]["dh_response_B_hex"].as_str().unwrap();
    let body = format!(
        r#"{{"diffie_hellman_response":"{b}","live_session_token_signature":"{}","live_session_token_expiration":1}}"#,
        "0".repeat(40)
    );
    let mut sim = sim();
    sim.broker.inject(
        Some("/oauth/live_session_token"),
        Fault::Body(Box::leak(body.into_boxed_str())),
    );
    let err = sim.run(IbkrIntent::Connect).unwrap_err();
    assert_eq!(err, Error::Crypto(CryptoError::LiveSessionTokenMismatch));
    assert_eq!(sim.machine.state(), IbkrState::Closed);
    assert_eq!(sim.broker.requests.len(), 1);
}

#[test]
fn bad_keys_and_primes_fail_at_construction() {
    let (_, oauth) = FakeIbkr::oauth(false);
    let now = VirtualClock::new().now();
    let mut bad = oauth.clone();
    bad.signature_key =
        PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----");
    assert!(matches!(
        IbkrSession::new(
            FakeIbkr::oauth_config(bad),
            broker_session::RngSeed::from_u64(1),
            now
        ),
        Err(Error::Crypto(CryptoError::InvalidKey { .. }))
    ));
    let mut bad: OAuthConfig = oauth.clone();
    bad.dh_prime = "xyz".into();
    assert!(matches!(
        IbkrSession::new(
            FakeIbkr::oauth_config(bad),
            broker_session::RngSeed::from_u64(1),
            now
        ),
        Err(Error::Crypto(CryptoError::InvalidKey { .. }))
    ));
    let mut bad = FakeIbkr::oauth_config(oauth);
    bad.base_url = "ftp://nowhere".into();
    assert!(matches!(
        IbkrSession::new(bad, broker_session::RngSeed::from_u64(1), now),
        Err(Error::Usage(_))
    ));
}

#[test]
fn a_dh_response_out_of_range_is_refused() {
    let mut sim = sim();
    sim.broker.inject(
        Some("/oauth/live_session_token"),
        Fault::Body(r#"{"diffie_hellman_response":"1","live_session_token_signature":"00","live_session_token_expiration":1}"#),
    );
    let err = sim.run(IbkrIntent::Connect).unwrap_err();
    assert!(
        matches!(err, Error::Crypto(CryptoError::DiffieHellman { .. })),
        "{err}"
    );
    // Not fatal: the next attempt works.
    sim.run(IbkrIntent::Connect).unwrap();
    assert_eq!(sim.machine.state(), IbkrState::Ready);
}

#[test]
fn authorize_waits_for_the_token_and_refuses_other_hosts() {
    let mut sim = sim();
    let now = sim.now();
    let mut req = get(ACCOUNTS);
    assert_eq!(
        sim.machine.authorize(&mut req, now),
        Err(AuthorizeError::NotLoggedIn)
    );
    let op = sim.submit(IbkrIntent::Connect).unwrap();
    assert_eq!(
        sim.machine.authorize(&mut req, now),
        Err(AuthorizeError::Pending { op })
    );
    sim.wait_for(op).unwrap();
    let mut evil = get("https://api.ibkr.com.evil.example/v1/api/iserver/accounts");
    assert!(matches!(
        sim.machine.authorize(&mut evil, sim.now()),
        Err(AuthorizeError::Refused(_))
    ));
    assert!(evil.headers().get("authorization").is_none());
    let mut numbered = get("https://1.api.ibkr.com/v1/api/iserver/accounts");
    assert!(sim.machine.authorize(&mut numbered, sim.now()).is_err());
    let _stamp = sim.machine.authorize(&mut req, sim.now()).unwrap();
    assert!(req.headers()["authorization"].is_sensitive());
}

#[test]
fn logout_forgets_the_token() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    let out = sim.run(IbkrIntent::Logout).unwrap();
    assert_eq!(out, IbkrOutcome::LoggedOut { status: Some(true) });
    assert_eq!(sim.machine.state(), IbkrState::Disconnected);
    let mut req = get(ACCOUNTS);
    assert_eq!(
        sim.machine.authorize(&mut req, sim.now()),
        Err(AuthorizeError::NotLoggedIn)
    );
    let n = sim.broker.requests.len();
    sim.advance(Duration::from_secs(3600));
    assert_eq!(sim.broker.requests.len(), n);
    // Connect again with a fresh token.
    sim.run(IbkrIntent::Connect).unwrap();
    assert_eq!(sim.broker.oauth_server().unwrap().tokens_issued, 2);
}

#[test]
fn renew_token_intent_and_gateway_only_intents() {
    let mut sim = sim();
    sim.run(IbkrIntent::Connect).unwrap();
    sim.run(IbkrIntent::RenewToken).unwrap();
    assert_eq!(sim.broker.oauth_server().unwrap().tokens_issued, 2);
    assert!(matches!(
        sim.submit(IbkrIntent::Validate),
        Err(UsageError::Unsupported { .. })
    ));
}

#[test]
fn a_token_expired_while_idle_is_renewed_before_use() {
    let mut sim = sim_with(false, |c, f| {
        f.oauth_server().unwrap().lst_lifetime = Duration::from_secs(3600);
        c.tickle_interval = Duration::from_secs(60);
    });
    sim.run(IbkrIntent::Connect).unwrap();
    sim.advance(Duration::from_secs(3 * 3600));
    assert!(sim.broker.oauth_server().unwrap().tokens_issued >= 4);
    assert_eq!(sim.broker.oauth_server().unwrap().bad_signatures, 0);
    assert!(sim.completions().all(|(_, r)| r.is_ok()));
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let headers = |seed: u64| {
        let (fake, oauth) = FakeIbkr::oauth(false);
        let clock = VirtualClock::new();
        let session = IbkrSession::new(
            FakeIbkr::oauth_config(oauth),
            broker_session::RngSeed::from_u64(seed),
            clock.now(),
        )
        .unwrap();
        let mut sim = Sim::with_clock(session, fake, clock);
        sim.run(IbkrIntent::Connect).unwrap();
        let mut req = get(ACCOUNTS);
        let _stamp = sim.machine.authorize(&mut req, sim.now()).unwrap();
        req.headers()["authorization"].to_str().unwrap().to_owned()
    };
    assert_eq!(headers(11), headers(11));
    assert_ne!(headers(11), headers(12));
}

#[test]
fn a_failed_proactive_renewal_is_retried_before_expiry() {
    let mut sim = sim_with(false, |_, f| {
        f.oauth_server().unwrap().lst_lifetime = Duration::from_secs(3600);
    });
    sim.run(IbkrIntent::Connect).unwrap();
    sim.broker.inject(
        Some("/oauth/live_session_token"),
        Fault::Transport(broker_session::FailureKind::Connect),
    );
    sim.advance(Duration::from_secs(3500));
    // One renewal failed at the transport, the retry 30 s later succeeded.
    assert_eq!(
        sim.broker.requests_to("/oauth/live_session_token").count(),
        3
    );
    assert_eq!(sim.broker.oauth_server().unwrap().tokens_issued, 2);
    assert_eq!(sim.completions().filter(|(_, r)| r.is_err()).count(), 1);
    assert_eq!(sim.machine.state(), IbkrState::Ready);
}
