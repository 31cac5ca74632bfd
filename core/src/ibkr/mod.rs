//! Interactive Brokers sessions: Client Portal Gateway and OAuth 1.0a (filled in by the IBKR machine work).
