//! Every value of `fixtures/ibkr-oauth1-vectors.json` reproduced bit for bit by the
//! pure OAuth 1.0a functions (values cross-checked against ibind's implementation).

use broker_session::CryptoError;
use broker_session::ibkr::oauth::base_string::{authorization_header, base_string};
use broker_session::ibkr::oauth::dh::{DhGroup, DhSecret, to_java_bytes};
use broker_session::ibkr::oauth::lst::{live_session_token, validate_live_session_token};
use broker_session::ibkr::oauth::sign::{
    decrypt_access_token_secret, hmac_sha256_signature, parse_private_key, rsa_sha256_signature,
};
use broker_session::ibkr::oauth::{hex_decode, hex_encode, percent};
use broker_session::secret::LiveSessionToken;
use rand::SeedableRng;
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("fixtures/ibkr-oauth1-vectors.json")).unwrap()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn params(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(7)
}

#[test]
fn to_byte_array_cases() {
    let v = vectors();
    let cases = v["to_byte_array"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for c in cases {
        let n = c["int"].as_u64().unwrap();
        let got = to_java_bytes(&n.to_be_bytes());
        assert_eq!(
            hex_encode(&got),
            c["bytes_hex"].as_str().unwrap(),
            "int {n}"
        );
    }
}

#[test]
fn dh_challenge_k_lst_and_signature_for_both_cases() {
    let v = vectors();
    let dh = &v["dh"];
    let group = DhGroup::new(
        s(dh, &["prime_hex"]),
        u32::try_from(dh["generator"].as_u64().unwrap()).unwrap(),
    )
    .unwrap();
    let cases = dh["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for c in cases {
        let name = s(c, &["case"]);
        let a = DhSecret::from_hex(s(c, &["dh_random_a_hex"])).unwrap();
        assert_eq!(
            group.challenge(&a),
            s(c, &["dh_challenge_A_hex"]),
            "{name}: A"
        );

        // The server's side gives the same B as the vector.
        let b = DhSecret::from_hex(s(c, &["server_secret_b_hex"])).unwrap();
        assert_eq!(
            group.public_value(&b),
            s(c, &["dh_response_B_hex"]),
            "{name}: B"
        );

        let k = group
            .shared_secret(&a, s(c, &["dh_response_B_hex"]))
            .unwrap();
        let kb = k.expose_secret();
        assert_eq!(
            kb.len() as u64,
            c["K_bytes_len"].as_u64().unwrap(),
            "{name}: K len"
        );
        assert_eq!(
            hex_encode(&kb[..2]),
            s(c, &["K_bytes_first2_hex"]),
            "{name}: K head"
        );
        // K itself (magnitude) matches K_hex.
        let k_hex = s(c, &["K_hex"]);
        assert_eq!(
            hex_encode(kb).trim_start_matches('0'),
            k_hex.trim_start_matches('0')
        );
        // DH symmetry: A^b == B^a.
        let k2 = group
            .shared_secret(&b, s(c, &["dh_challenge_A_hex"]))
            .unwrap();
        assert_eq!(k2.expose_secret(), kb, "{name}: symmetry");

        let prepend = hex_decode(s(c, &["prepend_hex"])).unwrap();
        let lst = live_session_token(kb, &prepend);
        assert_eq!(
            lst.expose_secret(),
            s(c, &["live_session_token_b64"]),
            "{name}: LST"
        );
        validate_live_session_token(
            &lst,
            s(c, &["consumer_key"]),
            s(c, &["live_session_token_signature_hex"]),
        )
        .unwrap();
        // A wrong signature is a typed mismatch.
        assert_eq!(
            validate_live_session_token(&lst, s(c, &["consumer_key"]), "00"),
            Err(CryptoError::LiveSessionTokenMismatch)
        );

        if let Some(wrong) = c
            .get("wrong_lst_if_leading_zero_omitted")
            .and_then(Value::as_str)
        {
            assert_eq!(kb[0], 0, "top-bit case has the 0x00 prefix");
            let without = live_session_token(&kb[1..], &prepend);
            assert_eq!(without.expose_secret(), wrong);
            assert_ne!(without.expose_secret(), lst.expose_secret());
            assert!(
                validate_live_session_token(
                    &without,
                    s(c, &["consumer_key"]),
                    s(c, &["live_session_token_signature_hex"])
                )
                .is_err()
            );
        }
    }
}

#[test]
fn lst_request_base_string() {
    let v = vectors();
    let r = &v["lst_request_base_string"];
    let got = base_string(
        s(r, &["prepend_hex"]),
        "POST",
        s(r, &["url"]),
        &params(&r["params"]),
    );
    assert_eq!(got, s(r, &["base_string"]));
}

#[test]
fn rsa_sha256_signature_and_authorization_header() {
    let v = vectors();
    let r = &v["rsa"];
    let base = s(r, &["lst_base_string"]);
    for pem_name in [
        "signature_private_key_pkcs1_pem",
        "signature_private_key_pkcs8_pem",
    ] {
        let key = parse_private_key(s(r, &[pem_name]), "signature key").unwrap();
        let sig = rsa_sha256_signature(&key, &mut rng(), base).unwrap();
        assert_eq!(sig, s(r, &["rsa_sha256_signature_b64"]), "{pem_name}");
        assert_eq!(
            percent::encode(&sig),
            s(r, &["rsa_sha256_signature_percent_encoded"])
        );
    }
    let mut p = params(&v["lst_request_base_string"]["params"]);
    p.push((
        "oauth_signature".to_owned(),
        s(r, &["rsa_sha256_signature_percent_encoded"]).to_owned(),
    ));
    assert_eq!(
        authorization_header("limited_poa", &p),
        s(r, &["lst_authorization_header"])
    );
}

#[test]
fn both_pem_forms_decrypt_the_access_token_secret() {
    let v = vectors();
    let r = &v["rsa"];
    for pem_name in [
        "encryption_private_key_pkcs1_pem",
        "encryption_private_key_pkcs8_pem",
    ] {
        let key = parse_private_key(s(r, &[pem_name]), "encryption key").unwrap();
        let prepend =
            decrypt_access_token_secret(&key, &mut rng(), s(r, &["access_token_secret_b64"]))
                .unwrap();
        assert_eq!(
            hex_encode(prepend.expose_secret()),
            s(r, &["expected_prepend_hex"]),
            "{pem_name}"
        );
    }
    // The wrong key does not fail decryption (implicit rejection) but gives another
    // prepend: only the LST signature check can catch it.
    let wrong = parse_private_key(s(r, &["signature_private_key_pkcs1_pem"]), "k").unwrap();
    let other = decrypt_access_token_secret(&wrong, &mut rng(), s(r, &["access_token_secret_b64"]));
    if let Ok(p) = other {
        assert_ne!(
            hex_encode(p.expose_secret()),
            s(r, &["expected_prepend_hex"])
        );
    }
    assert_eq!(
        parse_private_key(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            "k"
        )
        .unwrap_err(),
        CryptoError::InvalidKey { which: "k" }
    );
}

#[test]
fn hmac_sha256_request_signature_and_header() {
    let v = vectors();
    let h = &v["hmac_request"];
    let p = params(&h["params"]);
    let base = base_string("", s(h, &["method"]), s(h, &["url"]), &p);
    assert_eq!(base, s(h, &["base_string"]));
    let lst = LiveSessionToken::new(s(h, &["live_session_token_b64"]));
    let key = base64_decode(lst.expose_secret());
    let sig = hmac_sha256_signature(&key, &base);
    assert_eq!(sig, s(h, &["signature_base64"]));
    let enc = percent::encode(&sig);
    assert_eq!(enc, s(h, &["signature_percent_encoded"]));
    let mut p = p;
    p.push(("oauth_signature".to_owned(), enc));
    assert_eq!(
        authorization_header("limited_poa", &p),
        s(h, &["authorization_header"])
    );
}

fn base64_decode(b: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(b).unwrap()
}
