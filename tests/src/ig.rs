//! A fake IG Markets REST broker (filled in by the IG work).
