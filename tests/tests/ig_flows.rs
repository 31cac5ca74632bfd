//! End-to-end IG flows against the fake, in memory with a virtual clock.

use std::time::Duration;

use broker_session::ig::{
    AuthMode, IgIntent, IgOutcome, IgSession, IgState, LoginFlow, PersistedSession,
    PersistedTokens, SessionSnapshot,
};
use broker_session::{Error, Event, Machine, Observation};
use broker_session_testkit::ig::{FakeIg, FakeIgConfig, accounts_request, session_config};
use broker_session_testkit::sim::{Sim, VirtualClock};

fn sim_with(fake: FakeIg, flow: LoginFlow) -> Sim<IgSession, FakeIg> {
    sim_at(fake, flow, VirtualClock::new())
}

/// A new session ("another process") on the same fake and the same virtual clock.
fn sim_at(fake: FakeIg, flow: LoginFlow, clock: VirtualClock) -> Sim<IgSession, FakeIg> {
    let cfg = session_config(&fake, flow);
    let m = IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap();
    Sim::with_clock(m, fake, clock)
}

fn sim(flow: LoginFlow) -> Sim<IgSession, FakeIg> {
    sim_with(FakeIg::default(), flow)
}

fn app_ok(s: &mut Sim<IgSession, FakeIg>) -> String {
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.observation, Some(Observation::Accepted), "{out:?}");
    assert_eq!(out.response.unwrap().status(), 200);
    s.broker.stats.last_account_seen.clone().unwrap()
}

#[test]
fn v2_login_then_application_request() {
    let mut s = sim(LoginFlow::V2);
    let IgOutcome::LoggedIn(info) = s.run(IgIntent::Login).unwrap() else {
        panic!()
    };
    assert_eq!(info.account_id, "ACC-DEFAULT");
    assert_eq!(info.mode, AuthMode::Cst);
    assert_eq!(info.accounts.len(), 2);
    assert_eq!(
        info.lightstreamer_endpoint.as_deref(),
        Some("https://demo-apd.marketdatasystems.com")
    );
    assert_eq!(app_ok(&mut s), "ACC-DEFAULT");
    assert_eq!(s.broker.stats.logins, 1);
    assert_eq!(s.broker.stats.rejections, vec![]);
    assert!(matches!(s.machine.state(), IgState::Active { .. }));
    let ls = s.machine.lightstreamer_credentials().unwrap();
    assert_eq!(ls.user, "ACC-DEFAULT");
    assert!(ls.password.expose_secret().starts_with("CST-fakeig-cst-"));
    assert!(ls.password.expose_secret().contains("|XST-fakeig-xst-"));
}

#[test]
fn v1_login_works_the_same() {
    let mut s = sim(LoginFlow::V1);
    assert!(matches!(s.run(IgIntent::Login), Ok(IgOutcome::LoggedIn(_))));
    app_ok(&mut s);
}

#[test]
fn v3_login_keeps_alive_for_six_virtual_hours() {
    let mut s = sim(LoginFlow::V3);
    let IgOutcome::LoggedIn(info) = s.run(IgIntent::Login).unwrap() else {
        panic!()
    };
    assert_eq!(info.mode, AuthMode::OAuth);
    app_ok(&mut s);
    for _ in 0..(6 * 60) {
        s.advance(Duration::from_secs(60));
        app_ok(&mut s);
    }
    let st = &s.broker.stats;
    // A 60 s token refreshed 10 s early: one refresh every 50 s.
    assert!(st.refreshes >= 6 * 3600 / 50 - 2, "{}", st.refreshes);
    assert_eq!(st.logins, 1);
    assert_eq!(st.failed_refreshes, 0);
    assert_eq!(st.reused_refresh_tokens, 0);
    assert!(st.rejections.is_empty(), "{:?}", st.rejections.first());
    // Every machine-started refresh completed exactly once, successfully.
    let refreshed = s
        .completions()
        .filter(|(_, r)| matches!(r, Ok(IgOutcome::Refreshed { .. })))
        .count();
    assert_eq!(refreshed, st.refreshes);
}

#[test]
fn v3_expires_in_as_number_is_accepted() {
    let fake = FakeIg::new(FakeIgConfig {
        expires_in_as_number: true,
        ..FakeIgConfig::default()
    });
    let mut s = sim_with(fake, LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    s.advance(Duration::from_secs(300));
    app_ok(&mut s);
    assert!(s.broker.stats.refreshes >= 5);
}

#[test]
fn v3_short_token_never_refreshes_in_a_loop() {
    let fake = FakeIg::new(FakeIgConfig {
        access_ttl: Duration::from_secs(4),
        ..FakeIgConfig::default()
    });
    let mut s = sim_with(fake, LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    s.advance(Duration::from_secs(60));
    // Margin clamped to half the TTL: one refresh per 2 s, not a storm.
    assert!(
        s.broker.stats.refreshes <= 31,
        "{}",
        s.broker.stats.refreshes
    );
    app_ok(&mut s);
}

#[test]
fn v3_user_refresh_and_v2_refresh_is_unsupported() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    assert!(matches!(
        s.run(IgIntent::Refresh),
        Ok(IgOutcome::Refreshed { .. })
    ));
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    assert!(matches!(
        s.run(IgIntent::Refresh),
        Err(Error::Usage(broker_session::UsageError::Unsupported { .. }))
    ));
}

#[test]
fn v3_expired_token_at_authorize_starts_a_refresh() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    // Jump past expiry without running timers.
    s.clock.advance(Duration::from_secs(120));
    let mut req = accounts_request(&s.broker);
    let now = s.now();
    let Err(broker_session::AuthorizeError::Pending { op }) = s.machine.authorize(&mut req, now)
    else {
        panic!("expected pending")
    };
    assert!(matches!(s.wait_for(op), Ok(IgOutcome::Refreshed { .. })));
    app_ok(&mut s);
}

#[test]
fn encrypted_login_is_decrypted_and_verified_by_the_fake() {
    for as_string in [false, true] {
        let fake = FakeIg::new(FakeIgConfig {
            time_stamp_as_string: as_string,
            ..FakeIgConfig::default()
        });
        let mut s = sim_with(fake, LoginFlow::EncryptedV2);
        assert!(matches!(s.run(IgIntent::Login), Ok(IgOutcome::LoggedIn(_))));
        assert_eq!(s.broker.stats.encrypted_logins, 1);
        assert_eq!(s.broker.stats.encryption_keys, 1);
        app_ok(&mut s);
        // A fresh key per login.
        s.run(IgIntent::Login).unwrap();
        assert_eq!(s.broker.stats.encryption_keys, 2);
        assert_eq!(s.broker.stats.encrypted_logins, 2);
    }
}

#[test]
fn encrypted_login_with_wrong_password_is_rejected_once() {
    let mut s = sim(LoginFlow::EncryptedV2);
    s.broker.config.password = "something-else".into();
    assert!(matches!(
        s.run(IgIntent::Login),
        Err(Error::CredentialsRejected(_))
    ));
    assert_eq!(s.broker.stats.failed_logins, 1);
}

#[test]
fn web_platform_login_against_the_fake() {
    let mut s = sim(LoginFlow::WebPlatform);
    let IgOutcome::LoggedIn(info) = s.run(IgIntent::Login).unwrap() else {
        panic!()
    };
    assert_eq!(info.account_id, "ACC-DEFAULT");
    assert_eq!(s.broker.stats.web_logins, 1);
    assert_eq!(s.broker.stats.count("POST /clientsecurity/session"), 1);
    app_ok(&mut s);
}

#[test]
fn read_session_and_v3_streaming_tokens_survive_refresh() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    assert!(s.machine.lightstreamer_credentials().is_none());
    let IgOutcome::Session {
        details,
        streaming_tokens,
    } = s.run(IgIntent::ReadSession { fetch_tokens: true }).unwrap()
    else {
        panic!()
    };
    assert!(streaming_tokens);
    assert_eq!(details.account_id, "ACC-DEFAULT");
    let before = s.machine.lightstreamer_credentials().unwrap();
    s.advance(Duration::from_secs(200));
    assert!(s.broker.stats.refreshes >= 3);
    let after = s.machine.lightstreamer_credentials().unwrap();
    assert_eq!(before.password, after.password);
    assert_eq!(after.user, "ACC-DEFAULT");

    let IgOutcome::Session {
        streaming_tokens, ..
    } = s
        .run(IgIntent::ReadSession {
            fetch_tokens: false,
        })
        .unwrap()
    else {
        panic!()
    };
    assert!(!streaming_tokens);
}

#[test]
fn v3_login_can_fetch_streaming_tokens_itself() {
    let fake = FakeIg::default();
    let mut cfg = session_config(&fake, LoginFlow::V3);
    cfg.fetch_streaming_tokens = true;
    let clock = VirtualClock::new();
    let mut s = Sim::with_clock(
        IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap(),
        fake,
        clock,
    );
    s.run(IgIntent::Login).unwrap();
    assert!(s.machine.lightstreamer_credentials().is_some());
}

#[test]
fn v2_switch_uses_new_xst_and_old_one_is_rejected() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let mut old = accounts_request(&s.broker);
    let now = s.now();
    let _stamp = s.machine.authorize(&mut old, now).unwrap();
    let r = s
        .run(IgIntent::SwitchAccount {
            account_id: "ACC-OTHER".into(),
            make_default: false,
        })
        .unwrap();
    assert_eq!(
        r,
        IgOutcome::Switched {
            account_id: "ACC-OTHER".into(),
            already_active: false
        }
    );
    assert_eq!(app_ok(&mut s), "ACC-OTHER");
    // The old X-SECURITY-TOKEN is dead at the fake.
    let now = s.now();
    let Some(resp) =
        (match broker_session_testkit::sim::FakeBroker::handle(&mut s.broker, &old, now) {
            broker_session_testkit::sim::Reply::Response(r) => Some(r),
            _ => None,
        })
    else {
        panic!()
    };
    assert_eq!(resp.status(), 401);
    assert!(String::from_utf8_lossy(resp.body()).contains("account-token-invalid"));
    assert_eq!(s.broker.stats.default_account_changes, 0);
}

#[test]
fn v2_switch_to_current_account_412_is_success() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let r = s
        .run(IgIntent::SwitchAccount {
            account_id: "ACC-DEFAULT".into(),
            make_default: false,
        })
        .unwrap();
    assert_eq!(
        r,
        IgOutcome::Switched {
            account_id: "ACC-DEFAULT".into(),
            already_active: true
        }
    );
    assert!(
        s.broker
            .stats
            .rejections
            .iter()
            .any(|(_, st, c)| *st == 412 && c == "error.switch.accountId-must-be-different")
    );
    app_ok(&mut s);
}

#[test]
fn v2_switch_errors_are_typed_and_keep_the_session() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let e = s
        .run(IgIntent::SwitchAccount {
            account_id: "NOPE".into(),
            make_default: false,
        })
        .unwrap_err();
    assert!(
        matches!(e, Error::Rejected(ref a) if a.code_str() == "error.switch.invalid-accountId")
    );
    assert_eq!(app_ok(&mut s), "ACC-DEFAULT");
    s.run(IgIntent::SwitchAccount {
        account_id: "ACC-OTHER".into(),
        make_default: true,
    })
    .unwrap();
    assert_eq!(s.broker.stats.default_account_changes, 1);
}

#[test]
fn v2_switch_survives_relogin() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.run(IgIntent::SwitchAccount {
        account_id: "ACC-OTHER".into(),
        make_default: false,
    })
    .unwrap();
    s.broker.expire_cst_sessions();
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.sends, 2);
    assert_eq!(
        s.broker.stats.last_account_seen.as_deref(),
        Some("ACC-OTHER")
    );
    assert_eq!(s.broker.stats.logins, 2);
}

#[test]
fn v3_switch_changes_the_account_header_without_a_request() {
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    let puts = s.broker.stats.count("PUT /session");
    let r = s
        .run(IgIntent::SwitchAccount {
            account_id: "ACC-OTHER".into(),
            make_default: false,
        })
        .unwrap();
    assert!(
        matches!(r, IgOutcome::Switched { ref account_id, already_active: false } if account_id == "ACC-OTHER")
    );
    assert_eq!(s.broker.stats.count("PUT /session"), puts);
    assert_eq!(app_ok(&mut s), "ACC-OTHER");
    // Refreshes and re-logins do not undo it.
    s.advance(Duration::from_secs(600));
    assert_eq!(app_ok(&mut s), "ACC-OTHER");
    s.run(IgIntent::Login).unwrap();
    assert_eq!(app_ok(&mut s), "ACC-OTHER");
    assert!(matches!(
        s.run(IgIntent::SwitchAccount {
            account_id: "ACC-DEFAULT".into(),
            make_default: true
        }),
        Err(Error::Usage(_))
    ));
}

#[test]
fn configured_account_is_selected_after_login() {
    let fake = FakeIg::default();
    let mut cfg = session_config(&fake, LoginFlow::V2);
    cfg.account_id = Some("ACC-OTHER".into());
    let clock = VirtualClock::new();
    let mut s = Sim::with_clock(
        IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap(),
        fake,
        clock,
    );
    let IgOutcome::LoggedIn(info) = s.run(IgIntent::Login).unwrap() else {
        panic!()
    };
    assert_eq!(info.account_id, "ACC-OTHER");
    assert_eq!(s.broker.stats.switches, 1);
    assert_eq!(app_ok(&mut s), "ACC-OTHER");
}

#[test]
fn logout_2xx_401_and_transport_failure_all_clear_state() {
    use broker_session::FailureKind;
    use broker_session_testkit::ig::Fault;
    // 204.
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    assert_eq!(
        s.run(IgIntent::Logout).unwrap(),
        IgOutcome::LoggedOut {
            server_confirmed: true
        }
    );
    assert_eq!(s.machine.state(), IgState::LoggedOut);
    assert_eq!(s.broker.stats.logouts, 1);
    assert_eq!(s.broker.live_cst_sessions(), 0);
    // 401: already logged out.
    s.run(IgIntent::Login).unwrap();
    s.broker.expire_cst_sessions();
    assert_eq!(
        s.run(IgIntent::Logout).unwrap(),
        IgOutcome::LoggedOut {
            server_confirmed: true
        }
    );
    assert_eq!(s.machine.state(), IgState::LoggedOut);
    // Transport failure: forgotten anyway, not retried.
    s.run(IgIntent::Login).unwrap();
    s.broker.inject(
        "/session",
        Some(http::Method::DELETE),
        Fault::Fail(FailureKind::Io),
    );
    let deletes = s.broker.stats.count("DELETE /session");
    assert_eq!(
        s.run(IgIntent::Logout).unwrap(),
        IgOutcome::LoggedOut {
            server_confirmed: false
        }
    );
    assert_eq!(s.broker.stats.count("DELETE /session"), deletes + 1);
    assert_eq!(s.machine.state(), IgState::LoggedOut);
    let req = accounts_request(&s.broker);
    assert!(matches!(
        s.app_request(&req),
        Err(broker_session::AuthorizeError::NotLoggedIn)
    ));
    // v3 logout.
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    assert!(matches!(
        s.run(IgIntent::Logout),
        Ok(IgOutcome::LoggedOut { .. })
    ));
    assert_eq!(s.machine.state(), IgState::LoggedOut);
}

fn persisted_roundtrip(snap: SessionSnapshot) -> SessionSnapshot {
    let json = serde_json::to_string(&snap.expose_secrets()).unwrap();
    let back: PersistedSession = serde_json::from_str(&json).unwrap();
    SessionSnapshot::from_persisted(back)
}

#[test]
fn resume_v2_from_snapshot_valid_and_stale() {
    let mut a = sim(LoginFlow::V2);
    a.run(IgIntent::Login).unwrap();
    let snap = persisted_roundtrip(a.machine.snapshot().unwrap());
    assert_eq!(snap.account_id(), "ACC-DEFAULT");

    // Another "process" with the same fake.
    let fake = std::mem::take(&mut a.broker);
    let mut b = sim_at(fake, LoginFlow::V2, a.clock);
    let IgOutcome::Resumed(info) = b.run(IgIntent::Resume(snap.clone())).unwrap() else {
        panic!()
    };
    assert_eq!(info.account_id, "ACC-DEFAULT");
    assert_eq!(b.broker.stats.logins, 1, "no new login");
    app_ok(&mut b);

    // Stale tokens: Unauthorized, logged out, no login attempted.
    b.broker.expire_cst_sessions();
    let fake = std::mem::take(&mut b.broker);
    let mut c = sim_at(fake, LoginFlow::V2, b.clock);
    assert!(matches!(
        c.run(IgIntent::Resume(snap)),
        Err(Error::Unauthorized(_))
    ));
    assert_eq!(c.machine.state(), IgState::LoggedOut);
    assert_eq!(c.broker.stats.logins, 1);
}

#[test]
fn resume_v3_from_snapshot_with_wall_clock_expiry() {
    let mut a = sim(LoginFlow::V3);
    a.run(IgIntent::Login).unwrap();
    let p = a.machine.snapshot().unwrap().expose_secrets();
    let PersistedTokens::OAuth {
        expires_at_epoch_ms,
        ..
    } = &p.tokens
    else {
        panic!()
    };
    let now_ms = a.now().unix_millis();
    assert!((expires_at_epoch_ms - now_ms - 60_000).abs() < 1_000);
    let snap = SessionSnapshot::from_persisted(p.clone());

    // Valid access token.
    let fake = std::mem::take(&mut a.broker);
    let mut b = sim_at(fake, LoginFlow::V3, a.clock);
    assert!(matches!(
        b.run(IgIntent::Resume(snap)),
        Ok(IgOutcome::Resumed(_))
    ));
    assert_eq!(b.broker.stats.logins, 1);
    app_ok(&mut b);

    // Expired access token, refresh token still good: refreshed then validated.
    let fake = std::mem::take(&mut b.broker);
    let mut c = sim_at(fake, LoginFlow::V3, b.clock);
    c.clock.advance(Duration::from_secs(120));
    let snap = SessionSnapshot::from_persisted(b.machine.snapshot().unwrap().expose_secrets());
    assert!(matches!(
        c.run(IgIntent::Resume(snap)),
        Ok(IgOutcome::Resumed(_))
    ));
    assert_eq!(c.broker.stats.logins, 1);
    app_ok(&mut c);

    // Everything stale.
    c.broker.revoke_access_tokens();
    c.broker.revoke_refresh_tokens();
    let snap = c.machine.snapshot().unwrap();
    let fake = std::mem::take(&mut c.broker);
    let mut d = sim_at(fake, LoginFlow::V3, c.clock);
    assert!(matches!(
        d.run(IgIntent::Resume(snap)),
        Err(Error::Unauthorized(_))
    ));
    assert_eq!(d.machine.state(), IgState::LoggedOut);
    assert_eq!(d.broker.stats.logins, 1);
}

#[test]
fn resume_for_another_base_url_is_refused() {
    let mut a = sim(LoginFlow::V2);
    a.run(IgIntent::Login).unwrap();
    let mut p = a.machine.snapshot().unwrap().expose_secrets();
    p.base_url = "https://elsewhere.test/gateway/deal".into();
    let mut b = sim(LoginFlow::V2);
    assert!(
        b.submit(IgIntent::Resume(SessionSnapshot::from_persisted(p)))
            .is_err()
    );
}

#[test]
fn state_changes_are_reported() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    let states: Vec<_> = s
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StateChanged(st) => Some(st.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(states.first(), Some(&IgState::LoggingIn));
    assert!(matches!(states.last(), Some(IgState::Active { .. })));
}

#[test]
fn idle_cst_expiry_is_recovered_by_one_relogin() {
    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    s.advance(Duration::from_secs(7 * 3600));
    assert!(
        s.delivered.len() == 1,
        "a v2 session sends nothing while idle"
    );
    let req = accounts_request(&s.broker);
    let out = s.app_request(&req).unwrap();
    assert_eq!(out.sends, 2);
    assert_eq!(out.response.unwrap().status(), 200);
    assert_eq!(s.broker.stats.logins, 2);
    assert!(
        s.broker
            .stats
            .rejections
            .iter()
            .any(|(_, _, c)| c == "error.security.client-token-invalid")
    );
}

#[test]
fn encrypted_password_too_long_for_the_key_is_a_crypto_error() {
    let mut s = sim(LoginFlow::EncryptedV2);
    let long = "p".repeat(300);
    s.broker.config.password = long.clone();
    let mut cfg = session_config(&s.broker, LoginFlow::EncryptedV2);
    cfg.password = long.into();
    s.machine = IgSession::new(cfg, broker_session::RngSeed::from_u64(1), s.now()).unwrap();
    assert!(matches!(s.run(IgIntent::Login), Err(Error::Crypto(_))));
    assert_eq!(
        s.broker.stats.login_attempts, 0,
        "nothing sent after the key"
    );
    assert!(matches!(s.machine.state(), IgState::Closed { .. }));
}

#[test]
fn v3_configured_account_is_selected_locally() {
    let fake = FakeIg::default();
    let mut cfg = session_config(&fake, LoginFlow::V3);
    cfg.account_id = Some("ACC-OTHER".into());
    let clock = VirtualClock::new();
    let mut s = Sim::with_clock(
        IgSession::new(cfg, broker_session::RngSeed::from_u64(1), clock.now()).unwrap(),
        fake,
        clock,
    );
    let IgOutcome::LoggedIn(info) = s.run(IgIntent::Login).unwrap() else {
        panic!()
    };
    assert_eq!(info.account_id, "ACC-OTHER");
    assert_eq!(s.broker.stats.count("PUT /session"), 0);
    assert_eq!(app_ok(&mut s), "ACC-OTHER");
}

#[test]
fn session_request_refused_mid_operation_is_recovered_once() {
    use broker_session_testkit::ig::Fault;
    let mut s = sim(LoginFlow::V3);
    s.run(IgIntent::Login).unwrap();
    s.broker.inject(
        "/session",
        Some(http::Method::GET),
        Fault::error(401, Some("error.security.oauth-token-invalid")),
    );
    assert!(matches!(
        s.run(IgIntent::ReadSession {
            fetch_tokens: false
        }),
        Ok(IgOutcome::Session { .. })
    ));
    assert_eq!(s.broker.stats.refreshes, 1);

    let mut s = sim(LoginFlow::V2);
    s.run(IgIntent::Login).unwrap();
    for _ in 0..2 {
        s.broker.inject(
            "/session",
            Some(http::Method::GET),
            Fault::error(401, Some("error.security.client-token-invalid")),
        );
    }
    assert!(matches!(
        s.run(IgIntent::ReadSession {
            fetch_tokens: false
        }),
        Err(Error::Unauthorized(_))
    ));
    assert_eq!(s.broker.stats.logins, 2, "one re-login, then lost");
    assert!(matches!(s.machine.state(), IgState::Lost { .. }));
}
