//! The crate root both transports share: re-exports, the OS clock and seed, and
//! `FromEnv`. Expanded inside each transport (where IO belongs), written once here.

/// Expands, in a transport crate's root, to what both transports offer alike:
/// the re-exports of the core's configuration, error and broker types, `now()`,
/// `os_seed()` and the `FromEnv` trait. `$krate` is the transport crate's name
/// (for its documentation); `getrandom` must be a dependency of that crate.
#[doc(hidden)]
#[macro_export]
macro_rules! __transport_root {
    ($krate:ident) => {
        pub use $crate::transport::{Config, DEADLINE_MARGIN, Error, Tls};

        /// The core crate, re-exported so that a program needs this one dependency:
        /// the session machines, events, errors and secrets are all reachable through
        /// it (`broker_session::ig`, `broker_session::ibkr`, `broker_session::Event` …).
        pub use $crate as broker_session;
        /// The `http` crate the requests and responses are built with (the same
        /// version as the core's).
        #[doc(no_inline)]
        pub use $crate::http;
        /// What a program names to start a session: the broker configurations and
        /// machines, re-exported from [`broker_session`].
        #[doc(no_inline)]
        pub use $crate::{
            env::EnvError,
            ibkr::{IbkrConfig, IbkrSession, OAuthConfig},
            ig::{IgConfig, IgEnvironment, IgSession, LoginFlow},
        };

        /// The current time from the operating system's clocks.
        pub fn now() -> $crate::Now {
            $crate::Now::new(std::time::Instant::now(), std::time::SystemTime::now())
        }

        /// A seed for a machine's random number generator, from the operating system.
        pub fn os_seed() -> Result<$crate::RngSeed, Error> {
            let mut seed = $crate::RngSeed([0; 32]);
            getrandom::getrandom(&mut seed.0).map_err(|_| Error::Random)?;
            Ok(seed)
        }

        /// Reads a broker configuration from the process environment: the `IG_*` or
        /// `IBKR_*` variables in the tables of [`broker_session::env`], each of which
        /// may instead name a file in `<NAME>_FILE` (e.g.
        /// `IBKR_ENCRYPTION_KEY_FILE=enc.pem`).
        ///
        /// ```no_run
        #[doc = concat!("use ", stringify!($krate), "::{FromEnv, IbkrConfig, IgConfig};")]
        ///
        /// let ig = IgConfig::from_env()?; // IG_BASE_URL, IG_API_KEY, IG_IDENTIFIER, IG_PASSWORD …
        /// let ibkr = IbkrConfig::from_env()?; // IBKR_GATEWAY_URL, or the OAuth 1.0a variables
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub trait FromEnv: Sized {
            /// The configuration from the environment variables (and `*_FILE` files).
            ///
            /// # Errors
            /// An [`EnvError`] naming the variable that is missing or unusable, or the
            /// `*_FILE` that cannot be read; values are never shown.
            fn from_env() -> Result<Self, EnvError>;
        }

        impl<T: $crate::env::FromLookup> FromEnv for T {
            fn from_env() -> Result<Self, EnvError> {
                $crate::env::from_vars_and_files(
                    |name| std::env::var(name).ok(),
                    |path| std::fs::read_to_string(path).map_err(|e| e.to_string()),
                )
            }
        }
    };
}

/// Expands, in a transport, to its `Client<M>` handle and the calls that only read
/// it: a shared `Arc<Inner<M>>` (the transport's own type, with `shared`, `http` and
/// `base_url` fields and a `lock()` that returns the `Driver`), cloned by reference
/// count, printing the machine's state unless the lock is held.
#[doc(hidden)]
#[macro_export]
macro_rules! __client_handle {
    ($(#[$attr:meta])* $client:ident) => {
        $(#[$attr])*
        pub struct $client<M: $crate::Machine> {
            inner: std::sync::Arc<Inner<M>>,
        }

        impl<M: $crate::Machine> Clone for $client<M> {
            fn clone(&self) -> Self {
                Self { inner: std::sync::Arc::clone(&self.inner) }
            }
        }

        impl<M: $crate::Machine> std::fmt::Debug for $client<M> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut d = f.debug_struct(stringify!($client));
                // `try_lock`: Debug may be called while this thread holds the lock.
                match self.inner.shared.try_lock() {
                    Ok(g) => d.field("state", &g.machine().state()),
                    Err(_) => d.field("state", &"<locked>"),
                };
                d.finish_non_exhaustive()
            }
        }

        impl<M: $crate::Machine> $client<M> {
            /// The session's current state.
            pub fn state(&self) -> M::State {
                self.inner.lock().machine().state()
            }

            /// The base URL application requests with a relative path go under, if
            /// the machine (or the configuration it was opened from) has one.
            pub fn base_url(&self) -> Option<&str> {
                self.inner.base_url.as_deref()
            }

            /// Runs `f` on the machine under the client's lock, e.g. to read a getter
            /// the [`Machine`]($crate::Machine) trait does not have. Does no IO: if `f`
            /// gives the machine work (submits an intent), call
            /// [`service`](Self::service) afterwards. Do not block inside `f`, and do
            /// not call this client from it (the lock is not reentrant).
            pub fn with_machine<T>(&self, f: impl FnOnce(&mut M) -> T) -> T {
                f(self.inner.lock().machine_mut())
            }

            /// Keeps the session's events from now on, for
            /// [`drain_events`](Self::drain_events) and `next_event`. Until the
            /// first call to one of these three, events are not kept (nobody would
            /// read them); call it right after creating the client to see every
            /// event, the first login's included.
            pub fn subscribe(&self) {
                self.inner.lock().subscribe();
            }

            /// Takes every buffered event (state changes, session loss, and
            /// completions of operations no `run` call was waiting for, such as
            /// proactive refreshes and keep-alive ticks), oldest first.
            ///
            /// Events are kept from the first call to this,
            /// [`subscribe`](Self::subscribe) or `next_event` on: the first call
            /// finds only what came after an earlier `subscribe`.
            pub fn drain_events(&self) -> Vec<$crate::driver::SessionEvent<M>> {
                self.inner.lock().drain_events()
            }

            /// How many events were dropped because the buffer was full
            /// ([`Config::event_capacity`]($crate::transport::Config::event_capacity)).
            pub fn dropped_events(&self) -> u64 {
                self.inner.lock().dropped_events()
            }

            /// The HTTP client this session uses.
            pub fn http(&self) -> &HttpClient {
                &self.inner.http
            }
        }
    };
}
