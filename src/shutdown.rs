//! How the long-running loops of `serve` (the projector, the watchdog) stop: a `watch`
//! channel that turns true. They stop between transactions, never inside one, but they must
//! not sit out a database outage first: a wait for a connection is cut short.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// Resolves once stopping is requested: the flag turned true, or its sender is gone.
pub async fn requested(shutdown: &mut watch::Receiver<bool>) {
    // Err means the sender was dropped: nobody can ask to go on.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sleeps for `pause`; true when stopping was requested meanwhile (or before).
pub async fn sleep(pause: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        _ = requested(shutdown) => true,
        _ = tokio::time::sleep(pause) => false,
    }
}

/// Runs `work` unless stopping is requested first; `None` then. Only for work that holds no
/// transaction open (connecting, acquiring a connection): it is dropped half-way.
pub async fn unless_requested<F: Future>(
    work: F,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = requested(shutdown) => None,
        output = work => Some(output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_false_value_does_not_stop_and_a_dropped_sender_does() {
        let (stop, mut stopped) = watch::channel(false);
        stop.send_replace(false);
        assert!(!sleep(Duration::from_millis(10), &mut stopped).await);
        assert_eq!(unless_requested(async { 7 }, &mut stopped).await, Some(7));
        drop(stop);
        assert!(sleep(Duration::from_secs(60), &mut stopped).await);
        assert_eq!(
            unless_requested(std::future::pending::<()>(), &mut stopped).await,
            None
        );
    }
}
