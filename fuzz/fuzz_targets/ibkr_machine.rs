//! A whole IBKR session machine (gateway or OAuth 1.0a, chosen by the first byte)
//! driven by arbitrary bytes, with the loop contract checked throughout.
#![no_main]

use std::sync::OnceLock;

use broker_session::RngSeed;
use broker_session::ibkr::{IbkrConfig, IbkrIntent, IbkrSession, OAuthConfig};
use broker_session::secret::{AccessToken, AccessTokenSecret, PrivateKeyPem};
use broker_session_fuzz::drive;
use libfuzzer_sys::fuzz_target;

/// The test vectors' throwaway keys (never production keys).
const VECTORS: &str = include_str!("../../tests/fixtures/ibkr-oauth1-vectors.json");

fn oauth_config() -> &'static IbkrConfig {
    static CONFIG: OnceLock<IbkrConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap_or_default();
        let s = |a: &str, b: &str| v[a][b].as_str().unwrap_or_default().to_owned();
        let mut oauth = OAuthConfig::new(
            "TESTCONS",
            AccessToken::new("0123456789abcdef0123"),
            AccessTokenSecret::new(s("rsa", "access_token_secret_b64")),
            PrivateKeyPem::new(s("rsa", "encryption_private_key_pkcs1_pem")),
            PrivateKeyPem::new(s("rsa", "signature_private_key_pkcs1_pem")),
            s("dh", "prime_hex"),
        );
        oauth.realm = "limited_poa".into();
        IbkrConfig::oauth(oauth)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    // OAuth runs cost milliseconds each (RSA, 2048-bit DH): one input in eight.
    let oauth = first % 8 == 1;
    let mut config = if oauth {
        oauth_config().clone()
    } else {
        IbkrConfig::gateway()
    };
    config.compete = first & 0x02 != 0;
    config.auto_init = first & 0x04 == 0;
    config.preflight_accounts = first & 0x08 == 0;
    let base = config.base_url.clone();
    let Ok(machine) = IbkrSession::new(config, RngSeed::from_u64(1), broker_session_fuzz::start()) else {
        return;
    };
    drive(
        machine,
        rest,
        |n| match n % 8 {
            0 => IbkrIntent::Connect,
            1 => IbkrIntent::CheckStatus,
            2 => IbkrIntent::InitBrokerage { compete: None },
            3 => IbkrIntent::Tickle,
            4 => IbkrIntent::Reauthenticate,
            5 => IbkrIntent::Validate,
            6 => IbkrIntent::RenewToken,
            _ => IbkrIntent::Logout,
        },
        || {
            http::Request::get(format!("{base}/iserver/accounts"))
                .body(Vec::new())
                .unwrap_or_default()
        },
    );
});
