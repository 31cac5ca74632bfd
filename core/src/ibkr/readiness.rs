//! Plain answers to "can I trade?" from a brokerage session status, instead of three
//! `Option<bool>` fields.

use super::AuthStatus;
use super::policy::{SessionClass, session_class};

impl AuthStatus {
    /// Whether `/iserver` calls (trading, market data, accounts) work now: the
    /// brokerage session is `authenticated` (IBKR: "brokerage session authenticated,
    /// needed for all `/iserver/*`"), `connected` to the IBKR backend, not
    /// `competing` with another session of the same username, and not reported as
    /// not yet `established` (newer API versions send `established: false` until
    /// the account information is loaded). A field IBKR did not send counts as
    /// `false`, except `established`, which older versions never send.
    ///
    /// The same rule as [`SessionClass::Ready`] and the machine's
    /// [`IbkrState::Ready`](super::IbkrState::Ready).
    ///
    /// ```
    /// use broker_session::ibkr::responses::auth_status;
    /// let s = auth_status(br#"{"authenticated":true,"connected":true,"competing":false}"#).unwrap();
    /// assert!(s.is_ready() && !s.is_competing());
    /// // Connected, but the brokerage session timed out: `ssodh/init` is needed.
    /// let s = auth_status(br#"{"authenticated":false,"connected":true,"competing":false}"#).unwrap();
    /// assert!(!s.is_ready());
    /// ```
    pub fn is_ready(&self) -> bool {
        session_class(self) == SessionClass::Ready
    }

    /// Whether IBKR says another brokerage session for the same username is open
    /// elsewhere (TWS, the mobile app, Client Portal, another API client). Only one
    /// can trade: `ssodh/init` with `compete: true` takes over
    /// ([`IbkrConfig::compete`](super::IbkrConfig::compete)). `false` when IBKR did
    /// not say.
    ///
    /// ```
    /// use broker_session::ibkr::responses::auth_status;
    /// let s = auth_status(br#"{"authenticated":true,"connected":true,"competing":true}"#).unwrap();
    /// assert!(s.is_competing() && !s.is_ready());
    /// ```
    pub fn is_competing(&self) -> bool {
        self.competing == Some(true)
    }
}
