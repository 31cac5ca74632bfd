//! A whole IG session machine driven by arbitrary bytes: intents, answers, failures,
//! clock steps and application responses, with the loop contract checked throughout.
#![no_main]

use broker_session::RngSeed;
use broker_session::ig::{IgConfig, IgEnvironment, IgIntent, IgSession, LoginFlow};
use broker_session_fuzz::drive;
use libfuzzer_sys::fuzz_target;

const BASE: &str = "https://fuzz.test/gateway/deal";

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let mut config = IgConfig::new(
        IgEnvironment::Custom(BASE.into()),
        "key",
        "user",
        "password",
    );
    config.login_flow = match first % 5 {
        0 => LoginFlow::V1,
        1 => LoginFlow::V2,
        2 => LoginFlow::V3,
        3 => LoginFlow::EncryptedV2,
        _ => LoginFlow::WebPlatform,
    };
    config.web_platform_url = "https://fuzz.test/clientsecurity/session".into();
    config.fetch_streaming_tokens = first & 0x10 != 0;
    if first & 0x20 != 0 {
        config.account_id = Some("B".into());
    }
    let Ok(machine) = IgSession::new(config, RngSeed::from_u64(1), broker_session_fuzz::start()) else {
        return;
    };
    drive(
        machine,
        rest,
        |n| match n % 6 {
            0 => IgIntent::Login,
            1 => IgIntent::Refresh,
            2 => IgIntent::ReadSession {
                fetch_tokens: n & 0x40 != 0,
            },
            3 => IgIntent::SwitchAccount {
                account_id: if n & 0x40 != 0 {
                    "A".into()
                } else {
                    "B".into()
                },
                make_default: n & 0x80 != 0,
            },
            _ => IgIntent::Logout,
        },
        || {
            http::Request::get(format!("{BASE}/accounts"))
                .header("Version", "1")
                .body(Vec::new())
                .unwrap_or_default()
        },
    );
});
