//! Licensing: key files (L1), signed grants (L5, L7) and the seat decision (L6), as pure
//! functions over plain data. The server's store executes the seat decision as conditional
//! updates inside a transaction; this module decides, it never counts.

pub mod grant;
pub mod key;
pub mod object;
pub mod rank;
pub mod recheck;
pub mod renewal;
pub mod seat;
pub mod usage;

pub use grant::{GrantError, GrantSigner, LicenceView, effective_licence, verify_grant};
pub use key::{Authority, KeyBody, KeyError, LicenceKey, verify_key_file};
pub use object::{Object, ObjectError, group_chain};
pub use rank::{Origin, rank};
pub use seat::{Candidate, SeatDecision, SeatPlan, Settled, Slot, Source, plan_seat, settle};
