//! The why of a retry, in words: what every listing of retries shows in its `why` column
//! (`history`, `record`, `recover`, the API's rows, the dashboard's timeline and latest
//! retries). Read from an event's reason, step and `detail` after the flow (retry → store →
//! projector → report/http), never stored: one pure function, [`why`], so each door says the
//! same words, and events recorded before it existed read as well as new ones.
//!
//! The words come from what each door puts in `detail`:
//!
//! - the watchdog's four scenarios (`detail.scenario` and its facts, `recovery/scenario.rs`):
//!   `failed at step prepare`, `lagging: job at segment, variant done at generate`,
//!   `stale: 3 siblings ahead, idle 12m`, `final step: all 4 variants done at iou_eval`;
//! - an operator's recovery by hand (`detail.note`): `manual: <the note>`;
//! - anything else — `record`, the SQL door, a scenario of the caller's: `<reason> at step
//!   <step>`, or `<reason>`, with the caller's scenario after it in parentheses;
//!
//! then the error text the caller gave, by the one convention every door documents:
//! `detail.error`, else `detail.message`, as `; error: <text>`.
//!
//! The why is for people, wherever it is shown (a terminal, a spreadsheet, a web page, a
//! script that prints it): every piece of the caller's text in it (a step, a note, an error, a
//! scenario) is its first [`MAX_QUOTED_CHARS`] characters, cut with its full length said, and
//! every character the text rule refuses (control, bidirectional, zero-width) is written
//! `\u{XXXX}` ([`crate::text::escape`]). The exact values stay in `detail`.

use serde_json::Value;

use crate::event::RetryReason;
use crate::text;

/// The most characters of one piece of the caller's text a why quotes; the rest is cut and its
/// length said (`... (100000 characters)`), so a why stays short whatever a detail holds.
pub const MAX_QUOTED_CHARS: usize = 200;

/// The why of a retry (or of the watchdog's note where the limit stopped one) with this
/// `reason`, `step` and `detail`.
pub fn why(reason: RetryReason, step: Option<&str>, detail: &Value) -> String {
    let mut words = scenario_words(reason, step, detail)
        .or_else(|| manual_words(reason, detail))
        .unwrap_or_else(|| by_hand_words(reason, step, detail));
    if let Some(error) = error_text(detail) {
        words.push_str("; error: ");
        words.push_str(&quote(&error));
    }
    words
}

/// The words for one of the watchdog's scenarios, when `detail.scenario` names one and its
/// facts are there (an event recorded by hand with a scenario's name but not its facts reads
/// as one by hand).
fn scenario_words(reason: RetryReason, step: Option<&str>, detail: &Value) -> Option<String> {
    let scenario = detail.get("scenario")?.as_str()?;
    // The event's step is the target's: the variant's for a variant scenario.
    let variant_step = step.or_else(|| text_of(detail, "variant_step"));
    let job_step = text_of(detail, "job_step");
    match (scenario, reason) {
        ("failed", RetryReason::Failed) => Some(match variant_step {
            Some(step) => format!("failed at step {}", quote(step)),
            None => "failed".to_string(),
        }),
        ("lagging", RetryReason::Stuck) => Some(format!(
            "lagging: job at {}, variant done at {}",
            quote(job_step?),
            quote(variant_step?)
        )),
        ("stale", RetryReason::Stuck) => {
            // `siblings_ahead` since the why; before it, only the furthest one was recorded.
            let ahead = match detail.get("siblings_ahead").and_then(Value::as_i64) {
                Some(1) => "1 sibling ahead".to_string(),
                Some(n) => format!("{n} siblings ahead"),
                None => format!(
                    "a sibling ahead at {}",
                    quote(text_of(detail, "ahead_step")?)
                ),
            };
            Some(match detail.get("idle_seconds").and_then(Value::as_i64) {
                Some(seconds) => format!("stale: {ahead}, idle {}", idle(seconds)),
                None => format!("stale: {ahead}"),
            })
        }
        ("final_step", RetryReason::ManualRecovery) => {
            let variants = detail.get("variants_done")?.as_i64()?;
            let at = quote(job_step.or(step)?);
            Some(match variants {
                1 => format!("final step: its one variant done at {at}"),
                n => format!("final step: all {n} variants done at {at}"),
            })
        }
        _ => None,
    }
}

/// An operator's recovery by hand: its note (`recover`, the API's and the dashboard's Recover).
fn manual_words(reason: RetryReason, detail: &Value) -> Option<String> {
    if reason != RetryReason::ManualRecovery {
        return None;
    }
    text_of(detail, "note").map(|note| format!("manual: {}", quote(note)))
}

/// A retry recorded by hand: its reason and step, and a scenario of the caller's, if any.
fn by_hand_words(reason: RetryReason, step: Option<&str>, detail: &Value) -> String {
    let mut words = reason.to_string();
    if let Some(step) = step.filter(|step| !step.trim().is_empty()) {
        words.push_str(" at step ");
        words.push_str(&quote(step));
    }
    if let Some(scenario) = text_of(detail, "scenario") {
        words.push_str(&format!(" ({})", quote(scenario)));
    }
    words
}

/// The error text the caller gave: `detail.error`, else `detail.message`. A string as it is;
/// any other value (a number, an object) as its JSON text; null or blank is no error.
fn error_text(detail: &Value) -> Option<String> {
    ["error", "message"].iter().find_map(|key| {
        let text = match detail.get(key)? {
            Value::Null => return None,
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        (!text.trim().is_empty()).then_some(text)
    })
}

/// A non-blank string field of the detail.
fn text_of<'a>(detail: &'a Value, key: &str) -> Option<&'a str> {
    detail
        .get(key)?
        .as_str()
        .filter(|text| !text.trim().is_empty())
}

/// The caller's text as a why quotes it: trimmed, its first [`MAX_QUOTED_CHARS`] characters
/// with refused ones written `\u{XXXX}`, the full length said when cut.
fn quote(text: &str) -> String {
    text::escape(text.trim(), MAX_QUOTED_CHARS)
}

/// Idle time in the duration grammar of the flags: seconds under a minute (`45s`), else its
/// two largest units of minutes, hours and days, cut down (`12m`, `1h30m`, `2d3h`): the
/// seconds of a stuck variant's idle time say nothing.
fn idle(seconds: i64) -> String {
    let seconds = seconds.max(0);
    if seconds < 60 {
        return format!("{seconds}s");
    }
    let units = [("d", 86_400), ("h", 3_600), ("m", 60)];
    let first = units
        .iter()
        .position(|(_, size)| seconds >= *size)
        .unwrap_or(units.len() - 1);
    let mut rest = seconds;
    let mut shown = String::new();
    for (unit, size) in units.iter().skip(first).take(2) {
        let amount = rest / size;
        rest %= size;
        if amount > 0 {
            shown.push_str(&format!("{amount}{unit}"));
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_watchdog_scenario_reads_as_its_facts() {
        let failed = json!({"scenario": "failed", "job_status": "running", "job_step": "prepare",
                            "idle_seconds": 0, "stuck_after_seconds": 300,
                            "variant_step": "prepare"});
        assert_eq!(
            why(RetryReason::Failed, Some("prepare"), &failed),
            "failed at step prepare"
        );
        let lagging = json!({"scenario": "lagging", "job_status": "running",
                             "job_step": "segment", "variant_step": "generate",
                             "idle_seconds": 600, "stuck_after_seconds": 300});
        assert_eq!(
            why(RetryReason::Stuck, Some("generate"), &lagging),
            "lagging: job at segment, variant done at generate"
        );
        let stale = json!({"scenario": "stale", "job_status": "running", "job_step": "generate",
                           "variant_step": "generate", "idle_seconds": 720,
                           "stuck_after_seconds": 300, "siblings_ahead": 3,
                           "ahead_variant_id": "30010000-0000-4000-8000-000000000002",
                           "ahead_step": "segment"});
        assert_eq!(
            why(RetryReason::Stuck, Some("generate"), &stale),
            "stale: 3 siblings ahead, idle 12m"
        );
        let final_step = json!({"scenario": "final_step", "job_status": "running",
                                "job_step": "iou_eval", "idle_seconds": 600,
                                "stuck_after_seconds": 300, "variants_done": 4});
        assert_eq!(
            why(RetryReason::ManualRecovery, Some("iou_eval"), &final_step),
            "final step: all 4 variants done at iou_eval"
        );
    }

    #[test]
    fn one_sibling_one_variant_and_a_stale_event_from_before_the_count_read_naturally() {
        let one = json!({"scenario": "stale", "siblings_ahead": 1, "idle_seconds": 45});
        assert_eq!(
            why(RetryReason::Stuck, Some("generate"), &one),
            "stale: 1 sibling ahead, idle 45s"
        );
        // Recorded before `siblings_ahead` existed: the furthest sibling's step.
        let older = json!({"scenario": "stale", "ahead_step": "segment", "idle_seconds": 5430});
        assert_eq!(
            why(RetryReason::Stuck, Some("generate"), &older),
            "stale: a sibling ahead at segment, idle 1h30m"
        );
        let single = json!({"scenario": "final_step", "job_step": "iou_eval", "variants_done": 1});
        assert_eq!(
            why(RetryReason::ManualRecovery, None, &single),
            "final step: its one variant done at iou_eval"
        );
    }

    #[test]
    fn idle_time_is_written_in_the_flags_grammar_to_two_units_seconds_only_under_a_minute() {
        for (seconds, shown) in [
            (-5, "0s"),
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (90, "1m"),
            (720, "12m"),
            (725, "12m"),
            (3600, "1h"),
            (3661, "1h1m"),
            (86_400 * 2 + 3 * 3600 + 59, "2d3h"),
            (86_400 * 9, "9d"),
        ] {
            assert_eq!(idle(seconds), shown, "{seconds}");
        }
    }

    #[test]
    fn a_recovery_by_hand_reads_as_its_note() {
        let detail = json!({"note": "disk replaced, rerun", "recovered_by_hand": true});
        assert_eq!(
            why(RetryReason::ManualRecovery, Some("segment"), &detail),
            "manual: disk replaced, rerun"
        );
        // Past the limit, the log adds forced_past_limit; the words stay the note's.
        let forced = json!({"note": "ok", "recovered_by_hand": true, "forced_past_limit": 3});
        assert_eq!(
            why(RetryReason::ManualRecovery, None, &forced),
            "manual: ok"
        );
    }

    #[test]
    fn a_retry_recorded_by_hand_reads_as_its_reason_and_step() {
        assert_eq!(
            why(RetryReason::Failed, Some("segment"), &json!({})),
            "failed at step segment"
        );
        assert_eq!(why(RetryReason::Stuck, None, &json!({})), "stuck");
        assert_eq!(
            why(RetryReason::ManualRecovery, Some(" "), &json!({})),
            "manual_recovery"
        );
        // A scenario of the caller's, and a watchdog scenario's name without its facts or with
        // another reason: by hand, the scenario named.
        assert_eq!(
            why(
                RetryReason::Failed,
                Some("segment"),
                &json!({"scenario": "oom"})
            ),
            "failed at step segment (oom)"
        );
        assert_eq!(
            why(
                RetryReason::Stuck,
                Some("generate"),
                &json!({"scenario": "lagging"})
            ),
            "stuck at step generate (lagging)"
        );
        assert_eq!(
            why(
                RetryReason::Stuck,
                Some("prepare"),
                &json!({"scenario": "failed"})
            ),
            "stuck at step prepare (failed)"
        );
    }

    #[test]
    fn the_callers_error_follows_detail_error_first_then_detail_message() {
        let both = json!({"scenario": "failed", "error": "CUDA out of memory",
                          "message": "ignored"});
        assert_eq!(
            why(RetryReason::Failed, Some("generate"), &both),
            "failed at step generate; error: CUDA out of memory"
        );
        assert_eq!(
            why(
                RetryReason::Stuck,
                None,
                &json!({"message": "no heartbeat"})
            ),
            "stuck; error: no heartbeat"
        );
        // Null or blank: the next key, or no error at all.
        assert_eq!(
            why(
                RetryReason::Failed,
                None,
                &json!({"error": null, "message": "timeout"})
            ),
            "failed; error: timeout"
        );
        assert_eq!(
            why(RetryReason::Failed, None, &json!({"error": "  "})),
            "failed"
        );
        // Not a string: its JSON text.
        assert_eq!(
            why(
                RetryReason::Failed,
                None,
                &json!({"error": {"code": 137, "signal": "KILL"}})
            ),
            "failed; error: {\"code\":137,\"signal\":\"KILL\"}"
        );
        let noted = json!({"note": "rerun", "error": "disk full"});
        assert_eq!(
            why(RetryReason::ManualRecovery, None, &noted),
            "manual: rerun; error: disk full"
        );
    }

    #[test]
    fn hostile_text_is_escaped_and_each_piece_bounded() {
        let hostile = json!({
            "scenario": "lagging",
            "job_step": "seg\u{202e}tnem",
            "error": "\u{1b}[2J\u{1b}[31mOK\ncat /etc/passwd\u{2066}\u{feff}",
        });
        assert_eq!(
            why(RetryReason::Stuck, Some("gen\u{200b}erate"), &hostile),
            "lagging: job at seg\\u{202e}tnem, variant done at gen\\u{200b}erate; \
             error: \\u{001b}[2J\\u{001b}[31mOK\\u{000a}cat /etc/passwd\\u{2066}\\u{feff}"
        );
        let long = "x".repeat(100_000);
        let said = why(
            RetryReason::ManualRecovery,
            None,
            &json!({"note": long, "error": long}),
        );
        let piece = format!("{}... (100000 characters)", "x".repeat(MAX_QUOTED_CHARS));
        assert_eq!(said, format!("manual: {piece}; error: {piece}"));
    }

    #[test]
    fn no_refused_character_ever_reaches_a_why() {
        use proptest::prelude::*;
        let text = proptest::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter);
        let detail = (text.clone(), text.clone(), text.clone(), text.clone()).prop_map(
            |(scenario, job_step, note, error)| {
                json!({"scenario": scenario, "job_step": job_step, "variant_step": "v",
                       "note": note, "error": error})
            },
        );
        let reason = proptest::sample::select(vec![
            RetryReason::Stuck,
            RetryReason::Failed,
            RetryReason::ManualRecovery,
        ]);
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        runner
            .run(&(reason, text, detail), |(reason, step, detail)| {
                let said = why(reason, Some(&step), &detail);
                prop_assert!(!said.chars().any(text::is_refused), "{said:?}");
                // Each of at most three quoted pieces: 200 characters of at most 8 once
                // escaped, and the length said.
                prop_assert!(said.chars().count() < 3 * (8 * 200 + 30) + 60, "{said:?}");
                Ok(())
            })
            .unwrap();
    }
}
