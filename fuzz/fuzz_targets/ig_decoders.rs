//! IG's response decoders and error classification on arbitrary responses.
#![no_main]

use std::time::Duration;

use broker_session::ig::{
    BackOffs, Endpoint, PersistedSession, SessionSnapshot, action_for, responses,
};
use broker_session_fuzz::{Bytes, response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = response(&mut Bytes(data));
    let (h, body) = (r.headers(), r.body());
    let _ = responses::login_v2(h, body);
    let _ = responses::login_v3(body);
    let _ = responses::refresh(body);
    let _ = responses::read_session(h, body);
    let _ = responses::switch_account(h, body);
    let _ = responses::encryption_key(body);
    let _ = responses::web_platform_login(h, body);
    let code = responses::error_code(r.body());
    let b = BackOffs {
        allowance: Duration::from_secs(60),
        login_throttle: Duration::from_secs(180),
    };
    for e in [
        Endpoint::LoginV1,
        Endpoint::LoginV2,
        Endpoint::LoginV3,
        Endpoint::WebPlatformLogin,
        Endpoint::Refresh,
        Endpoint::EncryptionKey,
        Endpoint::ReadSession { fetch_tokens: false },
        Endpoint::ReadSession { fetch_tokens: true },
        Endpoint::Switch,
        Endpoint::Logout,
        Endpoint::Application,
    ] {
        let _ = action_for(e, r.status().as_u16(), code.as_deref(), b);
    }
    // Raw bytes straight into the decoders too.
    let _ = responses::error_code(data);
    if let Ok(p) = serde_json::from_slice::<PersistedSession>(data) {
        let _ = SessionSnapshot::from_persisted(p);
    }
});
