//! A node's runtime handle (server, gateway, agent): the root of shutdown and every task it
//! spawned. Tasks check `cancelled()` in every wait.

use std::future::Future;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Shutdown and tasks. Owned by the node; tasks reach it through the node.
#[derive(Debug)]
pub struct Runtime {
    shutdown: CancellationToken,
    tasks: TaskTracker,
    started: Instant,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
        }
    }
}

impl Runtime {
    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// Resolves when shutdown begins.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// A token cancelled at shutdown, or earlier by its holder (one task among several).
    pub fn child_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Begins shutdown: every task sees `cancelled()` resolve.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for every task, after shutdown began (no new tasks are accepted).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Tasks still running.
    pub fn tasks_left(&self) -> usize {
        self.tasks.len()
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}
