//! `Display` of IG states, outcomes and what they carry: one short line each, for a
//! person reading a log. Built from typed fields only; tokens and passwords are never
//! printed (the Lightstreamer password is not even mentioned).

use std::fmt;

use super::{
    AuthMode, IgAccount, IgOutcome, IgState, LightstreamerCredentials, SessionDetails, SessionInfo,
};
use crate::machine::Clipped;

/// ```
/// use broker_session::ig::AuthMode;
/// assert_eq!(AuthMode::Cst.to_string(), "CST tokens");
/// assert_eq!(AuthMode::OAuth.to_string(), "OAuth tokens");
/// ```
impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cst => "CST tokens",
            Self::OAuth => "OAuth tokens",
        })
    }
}

/// ```
/// use broker_session::ig::{AuthMode, IgState};
/// let s = IgState::Active { account_id: "ABC123".into(), mode: AuthMode::OAuth };
/// assert_eq!(s.to_string(), "active on ABC123 (OAuth tokens)");
/// assert_eq!(IgState::LoggedOut.to_string(), "logged out");
/// ```
impl fmt::Display for IgState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LoggedOut => f.write_str("logged out"),
            Self::LoggingIn => f.write_str("logging in"),
            Self::Active { account_id, mode } => {
                write!(f, "active on {} ({mode})", Clipped(account_id, 40))
            }
            Self::Recovering => f.write_str("recovering refused credentials"),
            Self::LoggingOut => f.write_str("logging out"),
            Self::BackingOff { .. } => {
                f.write_str("backing off: IG throttled, nothing is sent until the pause ends")
            }
            Self::Lost { reason } => write!(f, "lost: {reason}"),
            Self::Closed { reason } => write!(f, "closed: {reason}"),
        }
    }
}

/// `ABC123 "Spread bet" SPREADBET, preferred`: id, name, type, whether it is the
/// profile's default.
impl fmt::Display for IgAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Clipped(&self.account_id, 40))?;
        if let Some(name) = &self.account_name {
            write!(f, " \"{}\"", Clipped(name, 40))?;
        }
        if let Some(kind) = &self.account_type {
            write!(f, " {}", Clipped(kind, 20))?;
        }
        if self.preferred {
            f.write_str(", preferred")?;
        }
        Ok(())
    }
}

/// `account ABC123 (CST tokens), 2 accounts`: the active account, how requests are
/// authenticated, how many accounts the client has (v1/v2 logins list them).
impl fmt::Display for SessionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "account {} ({})",
            Clipped(&self.account_id, 40),
            self.mode
        )?;
        match self.accounts.len() {
            0 => Ok(()),
            1 => f.write_str(", 1 account"),
            n => write!(f, ", {n} accounts"),
        }
    }
}

/// `account ABC123, client 1234, GBP, en_GB`.
impl fmt::Display for SessionDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "account {}", Clipped(&self.account_id, 40))?;
        if let Some(client) = &self.client_id {
            write!(f, ", client {}", Clipped(client, 40))?;
        }
        if let Some(currency) = &self.currency {
            write!(f, ", {}", Clipped(currency, 10))?;
        }
        if let Some(locale) = &self.locale {
            write!(f, ", {}", Clipped(locale, 10))?;
        }
        Ok(())
    }
}

/// ```
/// use broker_session::ig::IgOutcome;
/// let o = IgOutcome::Switched { account_id: "XYZ789".into(), already_active: false };
/// assert_eq!(o.to_string(), "switched to XYZ789");
/// let o = IgOutcome::LoggedOut { server_confirmed: false };
/// assert_eq!(o.to_string(), "logged out (IG did not confirm; the tokens are forgotten anyway)");
/// ```
impl fmt::Display for IgOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LoggedIn(info) => write!(f, "logged in: {info}"),
            Self::Resumed(info) => write!(f, "resumed: {info}"),
            Self::Refreshed { .. } => f.write_str("access token refreshed"),
            Self::Recovered { generation } => {
                write!(f, "credentials recovered (generation {generation})")
            }
            Self::Session {
                details,
                streaming_tokens,
            } => {
                write!(f, "session read: {details}")?;
                if *streaming_tokens {
                    f.write_str(", with streaming tokens")?;
                }
                Ok(())
            }
            Self::Switched {
                account_id,
                already_active,
            } => {
                write!(f, "switched to {}", Clipped(account_id, 40))?;
                if *already_active {
                    f.write_str(" (it was already active)")?;
                }
                Ok(())
            }
            Self::LoggedOut {
                server_confirmed: true,
            } => f.write_str("logged out"),
            Self::LoggedOut {
                server_confirmed: false,
            } => f.write_str("logged out (IG did not confirm; the tokens are forgotten anyway)"),
            Self::Adopted {
                generation,
                installed: true,
            } => write!(f, "adopted the credentials of generation {generation}"),
            Self::Adopted {
                generation,
                installed: false,
            } => write!(
                f,
                "generation {generation} not adopted: the session already holds it or a newer one"
            ),
            Self::Following => f.write_str("following the owner's credentials"),
        }
    }
}

/// `user ABC123 at https://demo-apd.marketdatasystems.com`; the password is never
/// shown.
impl fmt::Display for LightstreamerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {}", Clipped(&self.user, 40))?;
        if let Some(endpoint) = &self.endpoint {
            write!(f, " at {}", Clipped(endpoint, 100))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ApiError, Error};

    fn info(accounts: usize) -> SessionInfo {
        SessionInfo {
            account_id: "ABC123".into(),
            client_id: Some("99".into()),
            accounts: (0..accounts)
                .map(|i| IgAccount {
                    account_id: format!("A{i}"),
                    account_name: None,
                    preferred: i == 0,
                    account_type: Some("CFD".into()),
                })
                .collect(),
            lightstreamer_endpoint: None,
            mode: AuthMode::Cst,
        }
    }

    #[test]
    fn outcomes_read_as_sentences() {
        assert_eq!(
            IgOutcome::LoggedIn(Box::new(info(2))).to_string(),
            "logged in: account ABC123 (CST tokens), 2 accounts"
        );
        assert_eq!(
            IgOutcome::Resumed(Box::new(info(0))).to_string(),
            "resumed: account ABC123 (CST tokens)"
        );
        let d = SessionDetails {
            account_id: "ABC123".into(),
            client_id: Some("99".into()),
            currency: Some("GBP".into()),
            locale: None,
            lightstreamer_endpoint: None,
            timezone_offset: None,
        };
        assert_eq!(
            IgOutcome::Session {
                details: Box::new(d),
                streaming_tokens: true
            }
            .to_string(),
            "session read: account ABC123, client 99, GBP, with streaming tokens"
        );
        assert_eq!(
            info(1).accounts[0].to_string(),
            "A0 CFD, preferred",
            "an account without a name"
        );
    }

    #[test]
    fn states_carry_the_reason_and_no_debug_names() {
        let e =
            Error::CredentialsRejected(ApiError::new(401, Some("error.security.invalid-details")));
        let s = IgState::Closed { reason: e }.to_string();
        assert!(s.starts_with("closed: credentials rejected"), "{s}");
        for state in [
            IgState::LoggedOut,
            IgState::LoggingIn,
            IgState::Recovering,
            IgState::LoggingOut,
        ] {
            let text = state.to_string();
            assert!(!text.contains(&format!("{state:?}")), "{text}");
        }
    }

    #[test]
    fn lightstreamer_credentials_never_show_the_password() {
        let c = LightstreamerCredentials {
            endpoint: Some("https://push.example".into()),
            user: "ABC123".into(),
            password: crate::secret::LightstreamerPassword::new("CST-secret1|XST-secret2"),
        };
        let s = c.to_string();
        assert_eq!(s, "user ABC123 at https://push.example");
        assert!(!s.contains("secret"));
    }

    #[test]
    fn broker_text_is_clipped_and_stripped_of_control_characters() {
        let s = IgOutcome::Switched {
            account_id: format!("X\n\u{1b}[31m{}", "9".repeat(100)),
            already_active: false,
        }
        .to_string();
        assert!(!s.contains('\n') && !s.contains('\u{1b}'), "{s}");
        assert!(s.chars().count() < 60, "{s}");
    }
}
