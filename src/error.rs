//! One question every error type of the library answers the same way: is this the caller's
//! mistake (bad input, an unknown target, a refused retry — fix the call and try again) or a
//! fault (the database failed)? The binary turns the answer into its exit code
//! (`cmd::exit`); the HTTP layer will turn it into a 4xx or a 5xx.

/// Whether an error is the caller's mistake rather than a fault.
pub trait CallerMistake {
    /// True when the input or the target's state is to blame, not the system.
    fn is_caller_mistake(&self) -> bool;
}
