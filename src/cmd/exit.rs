//! Every exit code of the `retrylog` binary, in one place (the benchmark's binary uses them
//! too), and the rule that picks one for an error.

use std::error::Error;

use crate::archive::verify::CheckError;
use crate::archive::ArchiveError;
use crate::connect::ConnectError;
use crate::error::CallerMistake;
use crate::grant::GrantError;
use crate::http::{HttpConfigError, TokensError};
use crate::migrate::SchemaError;
use crate::recovery::{ErrorColumnError, ManualRecoveryError};
use crate::report::ReportError;
use crate::store::{AppendError, ReadError};
use crate::window::WindowError;

/// `verify` (or a benchmark's check) found a mismatch.
pub const MISMATCH: u8 = 1;
/// A mistake in the input, or a retry the rules refuse.
pub const USAGE: u8 = 2;
/// `report alerts` listed something.
pub const ALERTS: u8 = 3;
/// No database could be reached or started, the one named does not exist and this command
/// does not create it, or the database stopped answering mid-command (sysexits
/// EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// Anything else (sysexits EX_SOFTWARE).
pub const FAILURE: u8 = 70;

/// The exit code for an error: the caller's mistakes, an unreachable database and everything
/// else are told apart so scripts can react. The first cause in the chain that knows wins.
pub fn code(error: &anyhow::Error) -> u8 {
    // The database stopped answering (no connection within --db-timeout, or the session
    // lost): unavailable, whichever operation was running.
    if error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(crate::sqlstate::connection_lost)
    }) {
        return UNAVAILABLE;
    }
    for cause in error.chain() {
        if cause.is::<ConnectError>() {
            return UNAVAILABLE;
        }
        if let Some(mistake) = as_caller_mistake(cause) {
            return if mistake.is_caller_mistake() {
                USAGE
            } else {
                FAILURE
            };
        }
    }
    FAILURE
}

/// Whether the error is stdout closed under a command that was still printing (`retrylog
/// history … | head -1`): the reader has what it wanted, so the binary ends quietly with 0,
/// as ripgrep and most Unix tools do, rather than report a failure nobody asked about. (Rust
/// ignores SIGPIPE, so the write returns EPIPE instead of killing the process with 141.)
pub fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The library's error types that can tell a mistake from a fault.
pub fn as_caller_mistake<'a>(cause: &'a (dyn Error + 'static)) -> Option<&'a dyn CallerMistake> {
    fn as_dyn<T: CallerMistake>(error: &T) -> &dyn CallerMistake {
        error
    }
    cause
        .downcast_ref::<AppendError>()
        .map(as_dyn)
        .or_else(|| cause.downcast_ref::<ReadError>().map(as_dyn))
        .or_else(|| cause.downcast_ref::<ReportError>().map(as_dyn))
        // A time flag `history` could not use (`report` wraps it in ReportError).
        .or_else(|| cause.downcast_ref::<WindowError>().map(as_dyn))
        .or_else(|| cause.downcast_ref::<SchemaError>().map(as_dyn))
        .or_else(|| cause.downcast_ref::<ArchiveError>().map(as_dyn))
        .or_else(|| cause.downcast_ref::<CheckError>().map(as_dyn))
        .or_else(|| cause.downcast_ref::<GrantError>().map(as_dyn))
        // `demo` asked to drop a database an earlier `demo --keep` left.
        .or_else(|| {
            cause
                .downcast_ref::<crate::cmd::demo::KeptDemoDatabase>()
                .map(as_dyn)
        })
        .or_else(|| cause.downcast_ref::<ManualRecoveryError>().map(as_dyn))
        // A bulk recovery refused (no filter, too many matches, a reused request id).
        .or_else(|| {
            cause
                .downcast_ref::<crate::recovery::bulk::BulkError>()
                .map(as_dyn)
        })
        // `serve --error-column` naming no text column of the pipeline tables.
        .or_else(|| cause.downcast_ref::<ErrorColumnError>().map(as_dyn))
        // A command run by a role without the capability it needs.
        .or_else(|| {
            cause
                .downcast_ref::<super::permission::NotPermitted>()
                .map(as_dyn)
        })
        .or_else(|| cause.downcast_ref::<TokensError>().map(as_dyn))
        .or_else(|| cause.downcast_ref::<HttpConfigError>().map(as_dyn))
        // Session work asked for through a transaction pooler without --direct-url.
        .or_else(|| {
            cause
                .downcast_ref::<crate::config::NeedsDirectUrl>()
                .map(as_dyn)
        })
        // A targets cursor from a listing in the other order.
        .or_else(|| {
            cause
                .downcast_ref::<crate::targets::TargetsError>()
                .map(as_dyn)
        })
}
