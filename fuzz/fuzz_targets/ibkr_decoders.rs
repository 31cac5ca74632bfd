//! IBKR's body decoders, status classification and OAuth parsers on arbitrary input.
#![no_main]

use broker_session::ibkr::oauth::{base_string, hex_decode, percent};
use broker_session::ibkr::{self as ibkr_policy, responses as decode};
use broker_session_fuzz::{Bytes, response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::auth_status(data);
    let _ = decode::ssodh_init(data);
    if let Ok(decode::TickleResponse::Ok(t)) = decode::tickle(data) {
        // The rest of a tickle is read on demand.
        let _ = t.details();
    }
    let _ = decode::validate(data);
    let _ = decode::logout(data);
    let _ = decode::reauthenticate(data);
    let _ = decode::live_session_token(data);
    let _ = decode::error_text(data);
    if let Ok(s) = decode::auth_status(data) {
        let _ = ibkr_policy::session_class(&s);
    }
    let r = response(&mut Bytes(data));
    let _ = ibkr_policy::is_no_session(&r);
    let _ = ibkr_policy::is_sso_redirect(&r);
    let _ = ibkr_policy::is_no_bridge(&r);
    let text = String::from_utf8_lossy(data);
    let _ = base_string::parse_authorization_header(&text);
    let _ = base_string::query_params(&text);
    let _ = percent::decode(&text, true);
    let _ = hex_decode(&text);
});
