//! One client's outgoing queue. The live feed must never wait for a client, so it only ever
//! tries to enqueue: past the bound the client is marked lagging (and closed with 4008) instead
//! of slowing the feed for everyone else. Catch-up reads from the stream, which can go as slowly
//! as the client reads, wait instead, and stop at half the bound so live frames of the client's
//! other subscriptions still fit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::event::FeedEvent;

/// Something for the writer to put on the socket.
#[derive(Debug)]
pub enum Outbound {
    /// An event for one subscription; `id_json` is the subscription id, JSON-encoded.
    Event { id_json: Arc<str>, event: Arc<FeedEvent> },
    /// A complete JSON frame (replies, errors).
    Control(String),
    /// A websocket-level heartbeat.
    Ping,
    /// The last frame; the writer stops after it.
    Close { code: u16, reason: String },
}

/// The enqueue side, shared by the connection, the feeds and catch-up tasks.
#[derive(Debug)]
pub struct ClientQueue {
    tx: mpsc::UnboundedSender<Outbound>,
    depth: AtomicUsize,
    bound: usize,
    lagging: AtomicBool,
    /// Fired when the client falls behind or the writer stopped: the connection must end.
    doomed: CancellationToken,
    drained: Notify,
}

/// Why an enqueue did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl ClientQueue {
    pub fn new(bound: usize) -> (Arc<ClientQueue>, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = ClientQueue {
            tx,
            depth: AtomicUsize::new(0),
            bound: bound.max(1),
            lagging: AtomicBool::new(false),
            doomed: CancellationToken::new(),
            drained: Notify::new(),
        };
        (Arc::new(queue), rx)
    }

    /// Enqueues without waiting; past the bound the client becomes lagging and `Gone` is returned.
    pub fn push(&self, item: Outbound) -> Result<(), Gone> {
        if self.lagging.load(Ordering::Relaxed) {
            return Err(Gone);
        }
        if self.depth.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            self.mark_lagging();
            return Err(Gone);
        }
        self.tx.send(item).map_err(|_| Gone)
    }

    /// Enqueues once the queue is below half its bound; `Gone` when the client is lagging or
    /// the writer stopped.
    pub async fn push_patiently(&self, item: Outbound) -> Result<(), Gone> {
        let half = (self.bound / 2).max(1);
        loop {
            if self.lagging.load(Ordering::Relaxed) || self.doomed.is_cancelled() {
                return Err(Gone);
            }
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a wake-up between check and wait is not lost.
            drained.as_mut().enable();
            if self.depth.load(Ordering::Acquire) < half {
                break;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.doomed.cancelled() => return Err(Gone),
            }
        }
        self.depth.fetch_add(1, Ordering::AcqRel);
        self.tx.send(item).map_err(|_| Gone)
    }

    /// The writer took one item off the queue.
    pub fn popped(&self) {
        let before = self.depth.fetch_sub(1, Ordering::AcqRel);
        if before <= (self.bound / 2).max(1) {
            self.drained.notify_waiters();
        }
    }

    pub fn mark_lagging(&self) {
        if !self.lagging.swap(true, Ordering::AcqRel) {
            self.doomed.cancel();
        }
    }

    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }

    /// Ends the connection for another reason (the writer failed).
    pub fn doom(&self) {
        self.doomed.cancel();
    }

    pub fn doomed(&self) -> &CancellationToken {
        &self.doomed
    }

    /// The final frame: bypasses the bound, so a lagging client still learns why it was closed.
    pub fn close(&self, code: u16, reason: String) {
        let _ = self.tx.send(Outbound::Close { code, reason });
    }

    pub fn bound(&self) -> usize {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_bound_the_client_is_lagging_and_doomed() {
        let (q, mut rx) = ClientQueue::new(2);
        assert!(q.push(Outbound::Ping).is_ok());
        assert!(q.push(Outbound::Ping).is_ok());
        assert_eq!(q.push(Outbound::Ping), Err(Gone));
        assert!(q.is_lagging() && q.doomed().is_cancelled());
        // Nothing more is accepted, even after the writer drained.
        rx.recv().await.unwrap();
        q.popped();
        assert_eq!(q.push(Outbound::Ping), Err(Gone));
        q.close(4008, "lagging".into());
        assert!(matches!(rx.recv().await, Some(Outbound::Ping)));
        assert!(matches!(rx.recv().await, Some(Outbound::Close { code: 4008, .. })));
    }

    #[tokio::test]
    async fn patient_pushes_wait_below_half_the_bound() {
        let (q, mut rx) = ClientQueue::new(4);
        q.push_patiently(Outbound::Ping).await.unwrap();
        q.push_patiently(Outbound::Ping).await.unwrap();
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.push_patiently(Outbound::Ping).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // Live pushes still fit while the patient one waits.
        q.push(Outbound::Ping).unwrap();
        rx.recv().await.unwrap();
        q.popped();
        rx.recv().await.unwrap();
        q.popped();
        assert!(tokio::time::timeout(std::time::Duration::from_secs(1), waiting).await.unwrap().unwrap().is_ok());
    }
}
