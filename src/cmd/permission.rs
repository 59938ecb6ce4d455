//! A command refused for lack of rights says which capability it needs and the command that
//! grants it, and exits 2 (the caller's mistake: run it as another role, or have the role
//! granted), instead of PostgreSQL's bare `permission denied for table jobs` and exit 70.
//!
//! Each command that a reader, a writer or a role without any capability may run names the
//! capabilities it needs ([`needed`]). When PostgreSQL refuses one of its statements
//! (SQLSTATE 42501, [`lacks_privilege`]) and the session's role lacks one of them, the error
//! becomes [`NotPermitted`], naming the grants to run; a role that holds them all and is
//! refused anyway keeps PostgreSQL's own error, since no grant named would help it (a database
//! migrated by an older release, rights changed by hand).

use crate::cli::{Command, Report};
use crate::grant::Capability;
use crate::recovery::ManualRecoveryError;
use crate::store::AppendError;

/// A command run by a role without a capability it needs.
#[derive(Debug)]
pub struct NotPermitted {
    /// The command as the user typed it, with the flag that raised the need (`record --force`).
    pub command: String,
    /// Every capability the command needs.
    pub needs: Vec<Capability>,
    /// Those the role lacks: the grants to run.
    pub lacking: Vec<Capability>,
    /// The session's role, escaped for the terminal.
    pub role: String,
    /// The role as a word of the grant command: quoted for the shell when it is not a plain
    /// name.
    pub grantee: String,
}

impl NotPermitted {
    /// The refusal of `command`, which needs `needs`, for `role` (the session's role, as the
    /// database names it), which lacks `lacking`.
    pub fn new(
        command: impl Into<String>,
        needs: &[Capability],
        lacking: &[Capability],
        role: &str,
    ) -> Self {
        let shown = crate::text::escape(role, 64);
        let plain = !shown.is_empty()
            && shown
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        let grantee = if plain {
            shown.clone()
        } else {
            format!("'{}'", shown.replace('\'', r"'\''"))
        };
        NotPermitted {
            command: command.into(),
            needs: needs.to_vec(),
            lacking: lacking.to_vec(),
            role: shown,
            grantee,
        }
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

impl std::fmt::Display for NotPermitted {
    /// `recover needs the operator and pipeline capabilities, which role alice lacks: retrylog
    /// grant operator alice and retrylog grant pipeline alice (as the schema owner)`; when the
    /// role holds some of them, `…; role alice lacks pipeline: retrylog grant pipeline alice …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |capabilities: &[Capability]| -> Vec<String> {
            capabilities.iter().map(|c| c.to_string()).collect()
        };
        let needs = match self.needs.len() {
            1 => format!("the {} capability", self.needs[0]),
            _ => format!("the {} capabilities", and_list(&names(&self.needs))),
        };
        let grants: Vec<String> = self
            .lacking
            .iter()
            .map(|capability| format!("retrylog grant {capability} {}", self.grantee))
            .collect();
        write!(f, "{} needs {needs}", self.command)?;
        if self.lacking == self.needs {
            write!(f, ", which role {} lacks", self.role)?;
        } else {
            write!(
                f,
                "; role {} lacks {}",
                self.role,
                and_list(&names(&self.lacking))
            )?;
        }
        write!(f, ": {} (as the schema owner)", and_list(&grants))
    }
}

impl std::error::Error for NotPermitted {}

impl crate::error::CallerMistake for NotPermitted {
    /// The caller runs the command as a role without the right to.
    fn is_caller_mistake(&self) -> bool {
        true
    }
}

/// What a command needs: its name as the user would say it and the capabilities it needs.
pub type Needs = (String, &'static [Capability]);

/// The command as the user would name it and the capabilities it needs; `None` for the
/// commands that need none (`token`, `local`, `completions`, `man`), the owner's (`migrate`,
/// `grant`, `archive`, `serve`'s watchdog) and `demo`, which runs in a database of its own.
///
/// `recover` needs two: the operator's `force` past the limit, and the pipeline's right to
/// change the target's status, which it locks and sets in the same transaction.
pub fn needed(command: &Command) -> Option<Needs> {
    use Capability::{Operator, Pipeline, Reader, Writer};
    let (name, capabilities): (String, &'static [Capability]) = match command {
        Command::Record(args) if args.force => ("record --force".into(), &[Operator]),
        Command::Record(_) => ("record".into(), &[Writer]),
        // A bulk recovery's dry run only lists what its filters match.
        Command::Recover(args) if args.dry_run => ("recover --dry-run".into(), &[Reader]),
        Command::Recover(_) => ("recover".into(), &[Operator, Pipeline]),
        Command::Replay(args) if args.dry_run => ("replay --dry-run".into(), &[Operator]),
        Command::Replay(_) => ("replay".into(), &[Operator]),
        Command::Project(_) => ("project".into(), &[Operator]),
        Command::Maintain(_) => ("maintain".into(), &[Operator]),
        Command::History(_) => ("history".into(), &[Reader]),
        Command::Verify(_) => ("verify".into(), &[Reader]),
        Command::Status(_) => ("status".into(), &[Reader]),
        Command::Targets(_) => ("targets".into(), &[Reader]),
        Command::Report(args) => {
            let report = match args.report {
                Report::TopJobs(_) => "top-jobs",
                Report::TopVariants(_) => "top-variants",
                Report::Stats(_) => "stats",
                Report::Alerts(_) => "alerts",
                Report::Trend(_) => "trend",
                Report::Outcomes(_) => "outcomes",
            };
            (format!("report {report}"), &[Reader])
        }
        Command::Migrate
        | Command::Archive(_)
        | Command::Serve(_)
        | Command::Demo(_)
        | Command::Grant(_)
        | Command::Local(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Token(_) => return None,
    };
    Some((name, capabilities))
}

/// Whether PostgreSQL refused the command a privilege somewhere in the chain: SQLSTATE 42501
/// as it came (a table, a function), or as the log's door classified it.
pub fn lacks_privilege(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(|error| {
                crate::sqlstate::of(error).as_deref() == Some(crate::sqlstate::INSUFFICIENT_PRIVILEGE)
            })
            || matches!(
                cause.downcast_ref::<AppendError>(),
                Some(AppendError::NotPermitted(_))
            )
            // Transparent: the recovery's refusal by the log is not a cause of its own.
            || matches!(
                cause.downcast_ref::<ManualRecoveryError>(),
                Some(ManualRecoveryError::Refused(AppendError::NotPermitted(_)))
            )
    })
}

/// `error` as [`NotPermitted`] when it is a refusal of a privilege and the session's role
/// lacks a capability `command` needs; otherwise `error` as it is (also when the role cannot
/// even be asked).
pub async fn explain(
    pool: &sqlx::PgPool,
    command: Option<Needs>,
    error: anyhow::Error,
) -> anyhow::Error {
    let Some((command, needs)) = command else {
        return error;
    };
    if !lacks_privilege(&error) {
        return error;
    }
    let lacking = async {
        let mut conn = pool.acquire().await?;
        let role: String = sqlx::query_scalar("SELECT session_user::text")
            .fetch_one(&mut *conn)
            .await?;
        let held = crate::grant::capabilities_of(&mut conn, &role).await?;
        // The operator capability holds the writer's and the reader's (migration 0006), and
        // capabilities_of asks pg_has_role, which sees through that membership.
        let lacking: Vec<Capability> = needs
            .iter()
            .copied()
            .filter(|capability| !held.contains(capability))
            .collect();
        Ok::<_, sqlx::Error>((role, lacking))
    };
    match lacking.await {
        Ok((role, lacking)) if !lacking.is_empty() => {
            NotPermitted::new(command, needs, &lacking, &role).into()
        }
        Ok(_) | Err(_) => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Capability::{Operator, Pipeline, Reader};

    #[test]
    fn the_refusal_names_the_capability_and_a_grant_that_runs_as_printed() {
        let refusal = NotPermitted::new("project", &[Operator], &[Operator], "alice");
        assert_eq!(
            refusal.to_string(),
            "project needs the operator capability, which role alice lacks: retrylog grant \
             operator alice (as the schema owner)"
        );
        let both = NotPermitted::new(
            "recover",
            &[Operator, Pipeline],
            &[Operator, Pipeline],
            "bo",
        );
        assert_eq!(
            both.to_string(),
            "recover needs the operator and pipeline capabilities, which role bo lacks: \
             retrylog grant operator bo and retrylog grant pipeline bo (as the schema owner)"
        );
        let one = NotPermitted::new("recover", &[Operator, Pipeline], &[Pipeline], "bo");
        assert_eq!(
            one.to_string(),
            "recover needs the operator and pipeline capabilities; role bo lacks pipeline: \
             retrylog grant pipeline bo (as the schema owner)"
        );
        let odd = NotPermitted::new("history", &[Reader], &[Reader], "night shift's");
        assert!(
            odd.to_string()
                .ends_with(r"retrylog grant reader 'night shift'\''s' (as the schema owner)"),
            "{odd}"
        );
    }
}
