//! IG Markets REST sessions (filled in by the IG machine work).
