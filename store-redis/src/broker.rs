//! What the fleet's coordinator needs of a broker's session machine: its role and
//! generation, its snapshot as bytes to seal, and the intents of the shared model
//! (adopt, lead, follow, recover, and obtaining a new session when there is nothing to
//! take over). IG and IBKR name these the same way in the core; this trait only maps
//! them, so the coordinator (`shared.rs`) is written once for both brokers.

use std::time::Instant;

use broker_session_ureq::broker_session::Machine;
use broker_session_ureq::broker_session::ibkr::{
    IbkrIntent, IbkrOutcome, IbkrRole, IbkrSnapshot, PersistedIbkrSession,
};
use broker_session_ureq::broker_session::ig::{
    IgIntent, IgOutcome, IgRole, PersistedSession, SessionSnapshot,
};
use broker_session_ureq::{IbkrSession, IgSession};
use zeroize::Zeroizing;

/// A session machine that can be shared by a fleet.
pub(crate) trait Broker: Machine + Send + 'static
where
    Self::Intent: Send,
    Self::State: Send,
    Self::Outcome: Send,
{
    /// Whether the session acts by itself (owns the shared session).
    fn is_owner(&self) -> bool;
    /// The generation the session holds.
    fn generation(&self) -> u64;
    /// Whether it holds something to act with (adopted or obtained).
    fn holds(&self) -> bool;
    /// Its snapshot, serialized, for sealing (`None`: nothing to share yet).
    fn snapshot_bytes(&self) -> Option<Zeroizing<Vec<u8>>>;
    /// The adoption of a stored snapshot (`None`: the bytes do not parse).
    fn adopt(generation: u64, bytes: &[u8]) -> Option<Self::Intent>;
    /// Take the lead, numbering new generations above `floor`.
    fn lead(floor: u64) -> Self::Intent;
    /// Step down, holding `generation`.
    fn follow(generation: u64) -> Self::Intent;
    /// Recover `refused` for a follower.
    fn recover(refused: u64) -> Self::Intent;
    /// Obtain a new session (IG: log in; IBKR: connect) when there is nothing to take
    /// over.
    fn obtain() -> Self::Intent;
    /// Whether `outcome` is the completion of an adoption (reported by the
    /// coordinator itself).
    fn is_adoption(outcome: &Self::Outcome) -> bool;
    /// Bounds the owner's authority by the end of its lease: driven after `until`,
    /// the session steps down by itself.
    fn set_lease_deadline(&mut self, until: Option<Instant>);
}

impl Broker for IgSession {
    fn is_owner(&self) -> bool {
        self.role() == IgRole::Owner
    }

    fn generation(&self) -> u64 {
        Self::generation(self)
    }

    fn holds(&self) -> bool {
        self.account_id().is_some()
    }

    fn snapshot_bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        serde_json::to_vec(&self.snapshot()?.expose_secrets())
            .ok()
            .map(Zeroizing::new)
    }

    fn adopt(generation: u64, bytes: &[u8]) -> Option<IgIntent> {
        let persisted: PersistedSession = serde_json::from_slice(bytes).ok()?;
        Some(IgIntent::Adopt {
            generation,
            snapshot: SessionSnapshot::from_persisted(persisted),
        })
    }

    fn lead(floor: u64) -> IgIntent {
        IgIntent::Lead {
            generation_floor: floor,
        }
    }

    fn follow(generation: u64) -> IgIntent {
        IgIntent::Follow { generation }
    }

    fn recover(refused: u64) -> IgIntent {
        IgIntent::Recover { refused }
    }

    fn obtain() -> IgIntent {
        IgIntent::Login
    }

    fn is_adoption(outcome: &IgOutcome) -> bool {
        matches!(outcome, IgOutcome::Adopted { .. })
    }

    fn set_lease_deadline(&mut self, until: Option<Instant>) {
        Self::set_lease_deadline(self, until);
    }
}

impl Broker for IbkrSession {
    fn is_owner(&self) -> bool {
        self.role() == IbkrRole::Owner
    }

    fn generation(&self) -> u64 {
        Self::generation(self)
    }

    fn holds(&self) -> bool {
        self.holds_credentials()
    }

    fn snapshot_bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        serde_json::to_vec(&self.snapshot()?.expose_secrets())
            .ok()
            .map(Zeroizing::new)
    }

    fn adopt(generation: u64, bytes: &[u8]) -> Option<IbkrIntent> {
        let persisted: PersistedIbkrSession = serde_json::from_slice(bytes).ok()?;
        Some(IbkrIntent::Adopt {
            generation,
            snapshot: IbkrSnapshot::from_persisted(persisted),
        })
    }

    fn lead(floor: u64) -> IbkrIntent {
        IbkrIntent::Lead {
            generation_floor: floor,
        }
    }

    fn follow(generation: u64) -> IbkrIntent {
        IbkrIntent::Follow { generation }
    }

    fn recover(refused: u64) -> IbkrIntent {
        IbkrIntent::Recover { refused }
    }

    fn obtain() -> IbkrIntent {
        IbkrIntent::Connect
    }

    fn is_adoption(outcome: &IbkrOutcome) -> bool {
        matches!(outcome, IbkrOutcome::Adopted { .. })
    }

    fn set_lease_deadline(&mut self, until: Option<Instant>) {
        Self::set_lease_deadline(self, until);
    }
}
