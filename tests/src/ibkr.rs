//! A fake Interactive Brokers broker (filled in by the IBKR work).
