//! Placeholder until the IG machine lands.
fn main() {}
