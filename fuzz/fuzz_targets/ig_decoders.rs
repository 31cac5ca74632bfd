//! IG's response decoders and error classification on arbitrary responses.
#![no_main]

use std::time::Duration;

use broker_session::ig::{
    BackOffs, Endpoint, PersistedSession, SessionSnapshot, classify, responses,
};
use broker_session_fuzz::{Bytes, response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = response(&mut Bytes(data));
    let _ = responses::login_v2(&r);
    let _ = responses::login_v3(&r);
    let _ = responses::refresh(&r);
    let _ = responses::read_session(&r);
    let _ = responses::switch_account(&r);
    let _ = responses::encryption_key(&r);
    let _ = responses::web_platform_login(&r);
    let code = responses::error_code(r.body());
    let b = BackOffs {
        allowance: Duration::from_secs(60),
        login_throttle: Duration::from_secs(180),
    };
    for e in [
        Endpoint::Login,
        Endpoint::Refresh,
        Endpoint::EncryptionKey,
        Endpoint::ReadSession,
        Endpoint::Switch,
        Endpoint::Logout,
        Endpoint::Application,
    ] {
        let _ = classify(e, r.status().as_u16(), code.as_deref(), b);
    }
    // Raw bytes straight into the decoders too.
    let _ = responses::error_code(data);
    if let Ok(p) = serde_json::from_slice::<PersistedSession>(data) {
        let _ = SessionSnapshot::from_persisted(p);
    }
});
