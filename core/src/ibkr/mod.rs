//! Interactive Brokers sessions: Client Portal Gateway and OAuth 1.0a.
pub mod oauth;
